"""Writes the corpus of hostile and odd input files used by the CLI and page tests.

    python make_corpus.py SOURCE_XRAY OUT_DIR

SOURCE_XRAY is a real chest X-ray (PNG or JPEG). OUT_DIR receives the files and
`expected.json`, a list of cases:

    {"file": "empty.png", "kind": "broken", "expect": "error", "reason": "empty"}
    {"file": "gray16.png", "kind": "odd", "expect": "same"}    # same top class as SOURCE_XRAY
    {"file": "tiny-48.png", "kind": "odd", "expect": "result"} # any answer, no error

`reason` is a case-insensitive substring the error message must contain. Every file is
generated from the source image or from nothing: no file of the shared data is copied.
Needs numpy and Pillow (the test-only venv).
"""

import io
import json
import os
import struct
import sys
import zlib

import numpy as np
from PIL import Image

# Largest side the decoder accepts (pneumoscope::preprocess::MAX_SIDE) and the smallest.
MAX_SIDE = 16_384
MIN_SIDE = 32


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int, rows: int) -> bytes:
    """A grey 8-bit PNG whose header declares width x height but whose data holds `rows` rows
    of zeros: a decompression bomb when the dimensions are huge."""
    raw = b"".join(b"\x00" + bytes(width) for _ in range(rows))
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + png_chunk(b"IDAT", zlib.compress(raw, 9))
        + png_chunk(b"IEND", b"")
    )


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def main() -> None:
    source, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    base = Image.open(source)
    base.load()
    gray = base.convert("L")
    w, h = gray.size
    cases = []

    def add(name: str, data: bytes, kind: str, expect: str, reason: str | None = None) -> None:
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
        case = {"file": name, "kind": kind, "expect": expect}
        if reason:
            case["reason"] = reason
        cases.append(case)

    png = encode(gray, "PNG")
    jpeg = encode(gray, "JPEG", quality=95)
    rng = np.random.default_rng(7)

    # Broken: each must give a clear error naming the file, and nothing else.
    add("empty.png", b"", "broken", "error", "empty")
    add("truncated.png", png[: len(png) // 2], "broken", "error", "truncated")
    add("truncated.jpg", jpeg[: len(jpeg) // 2], "broken", "error", "truncated")
    corrupt = bytearray(png)
    # Flip bytes inside the first IDAT chunk's compressed data (after the 8-byte signature,
    # the 25-byte IHDR chunk and the IDAT length and type).
    for i in range(60, min(len(corrupt) - 20, 400), 7):
        corrupt[i] ^= 0x5A
    add("corrupt.png", bytes(corrupt), "broken", "error", "corrupt")
    add("text.png", b"This is not an image, only text with an image extension.\n" * 20, "broken", "error",
        "not a supported image format")
    add("random.jpg", rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(), "broken", "error",
        "not a supported image format")
    add("header-only.jpg", jpeg[:2], "broken", "error", "not a supported image format")
    add("bomb-100000x100000.png", png_declaring(100_000, 100_000, 2), "broken", "error", "exceeds the decoding limits")
    add("bomb-16384x16384.png", png_declaring(MAX_SIDE, MAX_SIDE, 2), "broken", "error", "truncated")
    add("wide-20000x64.png", encode(Image.new("L", (20_000, 64)), "PNG"), "broken", "error",
        "exceeds the decoding limits")
    add("tiny-16.png", encode(gray.resize((16, 16)), "PNG"), "broken", "error", "at least 32x32")
    add("image.gif", encode(gray.resize((256, 256)), "GIF"), "broken", "error", "unsupported image format")
    add("image.bmp", encode(gray.resize((256, 256)), "BMP"), "broken", "error", "unsupported image format")
    add("image.webp", encode(gray.resize((256, 256)), "WEBP"), "broken", "error", "unsupported image format")
    add("fake-dicom.dcm", bytes(128) + b"DICM" + rng.integers(0, 256, 300, dtype=np.uint8).tobytes(), "broken",
        "error", "dicom")

    # Odd but valid: each must give the plain image's top class (or, for the extreme sizes,
    # an answer without error).
    add("plain.png", png, "odd", "same")
    add("jpeg-named.png", jpeg, "odd", "same")
    add("png-named.jpg", png, "odd", "same")
    g16 = (np.asarray(gray, dtype=np.uint16) * 257).astype(np.uint16)
    add("gray16.png", encode(Image.fromarray(g16), "PNG"), "odd", "same")
    add("palette.png", encode(gray.convert("RGB").quantize(256), "PNG"), "odd", "same")
    rgba = gray.convert("RGBA")
    add("rgba.png", encode(rgba, "PNG"), "odd", "same")
    add("gray-alpha.png", encode(gray.convert("LA"), "PNG"), "odd", "same")
    add("rgb.jpg", encode(gray.convert("RGB"), "JPEG", quality=95), "odd", "same")
    add("cmyk.jpg", encode(gray.convert("CMYK"), "JPEG", quality=95), "odd", "same")
    add("progressive.jpg", encode(gray, "JPEG", quality=95, progressive=True), "odd", "same")
    # Pixels stored rotated a quarter turn counter-clockwise, with EXIF orientation 6 ("rotate
    # 90 degrees clockwise to display"): upright once the orientation is applied.
    exif = Image.Exif()
    exif[0x0112] = 6
    add("exif-rotated.jpg", encode(gray.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif.tobytes()),
        "odd", "same")
    big = max(2, 6000 // max(w, h))
    add(f"large-{w * big}x{h * big}.png", encode(gray.resize((w * big, h * big), Image.Resampling.BICUBIC), "PNG"),
        "odd", "same")
    add("small-48.png", encode(gray.resize((48, 48), Image.Resampling.LANCZOS), "PNG"), "odd", "result")
    add("narrow-32x2000.png", encode(gray.resize((32, 2000)), "PNG"), "odd", "result")

    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(cases, f, indent=1)
    print(os.path.join(out, "expected.json"))


if __name__ == "__main__":
    main()
