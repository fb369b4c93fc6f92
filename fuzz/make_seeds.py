"""Writes the seed inputs of the fuzz corpora (synthetic images only, nothing from real data).

    python fuzz/make_seeds.py MODEL_FILE        # run from the repository root

- corpus/image: 40x40 gradients as PNG (grey 8 and 16 bits, RGB, RGBA, grey+alpha, palette)
  and JPEG (grey, RGB, progressive, CMYK, EXIF-rotated);
- corpus/dicom: the DICOM variants of tests/dicom/make_dicom.py made from the grey gradient,
  without their 128-byte preamble and `DICM` magic (the target adds them);
- corpus/model_file: MODEL_FILE's header with an empty payload (mode byte 0: a whole file), an
  ensemble file of two such members (mode byte 0), each in the current sealed format (4 and 5)
  and in the earlier unsealed one (1 and 2), and the first 4 KiB of its weights (mode byte 1: a
  payload the target wraps in a valid header).
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
    (version, hlen) = struct.unpack("<II", data[12:20])
    start = 52 if version >= 4 else 20  # sealed formats: a SHA-256 after the prefix
    header = json.loads(data[start : start + hlen])
    payload = data[start + hlen :]
    header.pop("ood", None)
    header["payload_len"] = 0
    header["payload_sha256"] = hashlib.sha256(b"").hexdigest()
    write("model_file", "payload-head-4k", b"\x01" + payload[:4096])
    for sealed, single, ensemble in [(False, 1, 2), (True, 4, 5)]:
        header["format_version"] = single
        member = assemble(single, header, sealed)
        digest = hashlib.sha256(member).hexdigest()
        ens = {
            "format_version": ensemble,
            "classes": header["classes"],
            "combine": "mean of the members' probabilities",
            "members": [{"arch": header["arch"], "len": len(member), "sha256": digest}] * 2,
            "metrics": None,
            "extra": None,
            "created_by": "seed",
            "payload_len": 2 * len(member),
            "payload_sha256": hashlib.sha256(member + member).hexdigest(),
        }
        tag = "sealed-" if sealed else ""
        write("model_file", f"{tag}header-empty-payload", b"\x00" + member)
        whole = assemble(ensemble, ens, sealed) + member + member
        write("model_file", f"{tag}ensemble-two-empty-members", b"\x00" + whole)


def assemble(version: int, header: dict, sealed: bool) -> bytes:
    """Magic, version, header length, the seal (SHA-256 of those and the header) and the header.

    The JSON is written as the library writes it (indented by two, UTF-8, fields in the order
    read), so that a sealed seed is byte for byte the file its parts serialise to.
    """
    text = json.dumps(header, indent=2, ensure_ascii=False).encode()
    prefix = b"PNEUMOSCOPE\x00" + struct.pack("<II", version, len(text))
    seal = hashlib.sha256(prefix + text).digest() if sealed else b""
    return prefix + seal + text

if __name__ == "__main__":
    main()
