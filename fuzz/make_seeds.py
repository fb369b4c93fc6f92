"""Writes the seed inputs of the fuzz corpora (synthetic images only, nothing from real data).

    python fuzz/make_seeds.py MODEL_FILE        # run from the repository root

- corpus/image: 40x40 gradients as PNG (grey 8 and 16 bits, RGB, RGBA, grey+alpha, palette)
  and JPEG (grey, RGB, progressive, CMYK, EXIF-rotated);
- corpus/dicom: the DICOM variants of tests/dicom/make_dicom.py made from the grey gradient,
  without their 128-byte preamble and `DICM` magic (the target adds them);
- corpus/model_file: MODEL_FILE's header with an empty payload (mode byte 0: a whole file), an
  ensemble file of two such members (mode byte 0), and the first 4 KiB of its weights (mode
  byte 1: a payload the target wraps in a valid header).
Needs numpy, Pillow and pydicom (the test-only venv).
"""

import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target: str, name: str, data: bytes) -> None:
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def encode(img, fmt, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def main() -> None:
    model = sys.argv[1]
    y, x = np.mgrid[0:40, 0:40]
    g = ((x * 3 + y * 2) % 256).astype(np.uint8)
    gray = Image.fromarray(g)
    seeds = {
        "gray8.png": encode(gray, "PNG"),
        "gray16.png": encode(Image.fromarray(g.astype(np.uint16) * 257), "PNG"),
        "rgb.png": encode(gray.convert("RGB"), "PNG"),
        "rgba.png": encode(gray.convert("RGBA"), "PNG"),
        "la.png": encode(gray.convert("LA"), "PNG"),
        "palette.png": encode(gray.convert("RGB").quantize(16), "PNG"),
        "gray.jpg": encode(gray, "JPEG", quality=80),
        "rgb.jpg": encode(gray.convert("RGB"), "JPEG", quality=80),
        "progressive.jpg": encode(gray, "JPEG", quality=80, progressive=True),
        "cmyk.jpg": encode(gray.convert("CMYK"), "JPEG", quality=80),
    }
    exif = Image.Exif()
    exif[0x0112] = 6
    seeds["exif.jpg"] = encode(gray, "JPEG", quality=80, exif=exif.tobytes())
    for name, data in seeds.items():
        write("image", name, data)

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "gradient.png")
        gray.save(src)
        out = subprocess.run(
            [sys.executable, os.path.join(HERE, "../tests/dicom/make_dicom.py"), src, tmp],
            check=True, capture_output=True, text=True,
        ).stdout.split()
        for path in out:
            data = open(path, "rb").read()
            assert data[128:132] == b"DICM"
            write("dicom", os.path.basename(path), data[132:])

    data = open(model, "rb").read()
    (hlen,) = struct.unpack("<I", data[16:20])
    header = json.loads(data[20 : 20 + hlen])
    payload = data[20 + hlen :]
    header.pop("ood", None)
    header["payload_len"] = 0
    header["payload_sha256"] = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    text = json.dumps(header).encode()
    write("model_file", "header-empty-payload", b"\x00" + data[:16] + struct.pack("<I", len(text)) + text)
    write("model_file", "payload-head-4k", b"\x01" + payload[:4096])
    # An ensemble (format version 2) of two copies of that empty-payload file.
    member = data[:16] + struct.pack("<I", len(text)) + text
    digest = hashlib.sha256(member).hexdigest()
    ens = {
        "format_version": 2,
        "classes": header["classes"],
        "combine": "mean of the members' probabilities",
        "members": [{"arch": header["arch"], "len": len(member), "sha256": digest}] * 2,
        "metrics": None,
        "extra": None,
        "created_by": "seed",
        "payload_len": 2 * len(member),
        "payload_sha256": hashlib.sha256(member + member).hexdigest(),
    }
    etext = json.dumps(ens).encode()
    prefix = data[:12] + struct.pack("<II", 2, len(etext))
    write("model_file", "ensemble-two-empty-members", b"\x00" + prefix + etext + member + member)


if __name__ == "__main__":
    main()
