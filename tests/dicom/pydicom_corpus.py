"""Test-only: what pydicom makes of the DICOM files it ships as its own test data, the reference
for the project's reader on a corpus written by others (scanners, toolkits, PACS exports).

Usage: python pydicom_corpus.py OUT_DIR

For every file in pydicom's `data/test_files` (any extension, folders skipped) it tries
`dcmread` and `pixel_array` with the pixel handlers of the test venv (numpy, Pillow). Where that
gives an image, the first frame goes through the transforms the project documents for DICOM:
the modality LUT (rescale slope and intercept), the first VOI LUT or window of the file, else
none; MONOCHROME1 inverted; then min-max scaled to 0..255. It is written as OUT_DIR/NAME.f32
(float32, little-endian, rows x columns x samples). OUT_DIR/corpus.json lists every file:

  {"file": path, "name": NAME, "pydicom": "image" | "no image" | "error",
   "reason": why not an image, "rows", "columns", "samples", "frames", "bits_allocated",
   "photometric", "transfer_syntax", "reference": "NAME.f32" or null}

A file "pydicom decodes to a single 2-D image of at least 32 px" is one with "pydicom":
"image", rows and columns of at least 32; its first frame is the reference.
"""
import json
import os
import sys
import warnings

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut, apply_voi_lut

warnings.simplefilter("ignore")


def num(ds, key: str, default: int) -> int:
    """An integer attribute, or the default when it is missing or not a number."""
    try:
        return int(getattr(ds, key, default) or default)
    except (TypeError, ValueError):
        return default


def reference(ds) -> np.ndarray:
    """The first frame, through the transforms the project documents, on 0..255."""
    arr = ds.pixel_array
    frames, samples = num(ds, "NumberOfFrames", 1), num(ds, "SamplesPerPixel", 1)
    if frames > 1:
        arr = arr[0]
    arr = arr.astype(np.float64)
    if samples == 1:
        arr = apply_modality_lut(arr, ds).astype(np.float64)
        arr = apply_voi_lut(arr, ds, index=0).astype(np.float64)
        if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
            arr = arr.max() - arr
        arr = arr[:, :, None]
    lo, hi = float(arr.min()), float(arr.max())
    scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
    return scaled.astype("<f4")


def main() -> None:
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    root = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files")
    rows = []
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if not os.path.isfile(path):
            continue
        row = {"file": path, "name": name, "reference": None, "reason": None}
        try:
            ds = pydicom.dcmread(path, force=True)
        except Exception as e:  # noqa: BLE001 - any failure is a finding
            row.update(pydicom="error", reason=f"dcmread: {type(e).__name__}: {e}"[:300])
            rows.append(row)
            continue
        meta = getattr(ds, "file_meta", None)
        row.update(
            rows=num(ds, "Rows", 0),
            columns=num(ds, "Columns", 0),
            samples=num(ds, "SamplesPerPixel", 1),
            frames=num(ds, "NumberOfFrames", 1),
            bits_allocated=num(ds, "BitsAllocated", 0),
            photometric=str(getattr(ds, "PhotometricInterpretation", "")),
            transfer_syntax=str(getattr(meta, "TransferSyntaxUID", "")) if meta else "",
        )
        try:
            has_pixels = "PixelData" in ds
        except Exception as e:  # noqa: BLE001
            row.update(pydicom="error", reason=f"dcmread: {type(e).__name__}: {e}"[:300])
            rows.append(row)
            continue
        if not has_pixels:
            row.update(pydicom="no image", reason="no Pixel Data element")
            rows.append(row)
            continue
        try:
            ref = reference(ds)
        except Exception as e:  # noqa: BLE001
            row.update(pydicom="error", reason=f"pixel_array: {type(e).__name__}: {e}"[:300])
            rows.append(row)
            continue
        if ref.ndim != 3 or ref.shape[2] not in (1, 3):
            row.update(pydicom="no image", reason=f"a frame of shape {ref.shape}")
            rows.append(row)
            continue
        row["pydicom"] = "image"
        row["reference"] = name + ".f32"
        row["rows"], row["columns"], row["samples"] = (int(s) for s in ref.shape)
        ref.tofile(os.path.join(out, row["reference"]))
        rows.append(row)
    with open(os.path.join(out, "corpus.json"), "w") as f:
        json.dump(rows, f, indent=1)
    images = sum(r["pydicom"] == "image" for r in rows)
    print(f"{len(rows)} files: {images} images as pydicom decodes them")


if __name__ == "__main__":
    main()
