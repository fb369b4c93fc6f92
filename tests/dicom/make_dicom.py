"""Test-only: DICOM versions of a real chest X-ray, each of which must read back as the same
grey image (so the classifier must give the same answer as for the plain file).

Usage: python make_dicom.py IMAGE OUT_DIR

Writes, from the image's grey levels g (0..255):
  mono2-8bit.dcm          MONOCHROME2, 8 bits stored, no window (min-max normalised on reading)
  mono2-16bit-window.dcm  MONOCHROME2, 16 bits, g*257, window centre/width covering 0..65535
  mono2-16bit.dcm         MONOCHROME2, 16 bits, g*257, no window
  mono1-12bit-window.dcm  MONOCHROME1 (inverted), 12 bits, (255-g)*16, window 0..4095
  mono2-12bit-rescale.dcm MONOCHROME2, 12 bits, stored g*8+1024 with rescale slope 2 and
                          intercept -2048 (so 16*g), window on the rescaled values
  mono2-16bit-rle.dcm     the 16-bit image, RLE Lossless transfer syntax
and prints one line per file.
"""
import os
import sys

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, SecondaryCaptureImageStorage, generate_uid


def dataset(pixels, bits, photometric, extra=None, syntax=ExplicitVRLittleEndian):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[photometric, str(bits)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = "TEST"
    ds.ViewPosition = "PA"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if bits == 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype(np.uint8 if bits == 8 else np.uint16).tobytes()
    for k, v in (extra or {}).items():
        setattr(ds, k, v)
    if syntax == RLELossless:
        ds.compress(RLELossless)
    return ds


def main():
    image, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    g = np.asarray(Image.open(image).convert("L"), dtype=np.int64)
    files = {
        "mono2-8bit.dcm": dataset(g, 8, "MONOCHROME2"),
        "mono2-16bit-window.dcm": dataset(g * 257, 16, "MONOCHROME2",
                                          {"WindowCenter": 32767.5, "WindowWidth": 65536}),
        "mono2-16bit.dcm": dataset(g * 257, 16, "MONOCHROME2"),
        "mono1-12bit-window.dcm": dataset((255 - g) * 16, 12, "MONOCHROME1",
                                          {"WindowCenter": 2047.5, "WindowWidth": 4096}),
        "mono2-12bit-rescale.dcm": dataset(g * 8 + 1024, 12, "MONOCHROME2",
                                           {"RescaleIntercept": -2048, "RescaleSlope": 2,
                                            "RescaleType": "US",
                                            "WindowCenter": 2047.5, "WindowWidth": 4096}),
        "mono2-16bit-rle.dcm": dataset(g * 257, 16, "MONOCHROME2", syntax=RLELossless),
    }
    for name, ds in files.items():
        path = os.path.join(out, name)
        ds.save_as(path, enforce_file_format=True)
        print(path)


if __name__ == "__main__":
    main()
