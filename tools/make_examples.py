"""Picks the page's example X-rays from the test split of the default model's data.

    python tools/make_examples.py MANIFEST ../shared/data web/examples

One image per case (a child's normal, bacterial and viral X-ray, an adult normal and an adult
COVID-19 case): the first, by path, of the test split's rows of that label, population and
source whose licence allows redistribution. Kermany's images are CC BY 4.0, NIH
ChestX-ray14's are public with no restriction on use, and a COVID-19-collection image is taken
only when its own licence column says CC BY or CC BY-SA. The adult-normal teaching set states
no licence and is never used. An image over 100 KB is re-encoded as JPEG (grey levels, longer
side at most 1024 pixels, lower quality until it fits); `examples.json` says so. Nothing is
chosen by what the model answers: the first eligible row is taken, right or wrong.
"""

import csv
import io
import json
import os
import sys

from PIL import Image

LIMIT = 100_000

CASES = [
    # (file stem, label, population, source, title)
    ("child-normal", "normal", "child", "kermany", "Child, normal"),
    ("child-bacterial", "bacterial", "child", "kermany", "Child, bacterial pneumonia"),
    ("child-viral", "viral", "child", "kermany", "Child, viral pneumonia"),
    ("adult-normal", "normal", "adult", "nih", "Adult, no finding"),
    ("adult-covid19", "covid19", "adult", "cohen", "Adult, COVID-19"),
]

COLLECTIONS = {
    "kermany": (
        "Kermany et al., Labeled Optical Coherence Tomography (OCT) and Chest X-Ray Images "
        "for Classification, Mendeley Data v2 (2018), doi:10.17632/rscbjbr9sj.2",
        "CC BY 4.0",
    ),
    "nih": (
        "NIH Clinical Center, ChestX-ray14 (Wang et al., CVPR 2017)",
        "public, no restriction on use (NIH Clinical Center; cite the data set)",
    ),
}
REDISTRIBUTABLE = {"CC BY", "CC BY 3.0", "CC BY 4.0", "CC BY-SA", "CC BY-SA 4.0"}


def fitted(path):
    """The file's bytes if it fits the limit, else a re-encoded JPEG that does."""
    data = open(path, "rb").read()
    if len(data) <= LIMIT:
        return data, os.path.splitext(path)[1].lower().replace(".jpeg", ".jpg"), False
    img = Image.open(path).convert("L")
    img.thumbnail((1024, 1024))
    for quality in range(90, 30, -5):
        out = io.BytesIO()
        img.save(out, "JPEG", quality=quality)
        if out.tell() <= LIMIT:
            return out.getvalue(), ".jpg", True
    raise SystemExit(f"{path}: cannot fit {LIMIT} bytes")


def main(manifest, shared, out):
    rows = sorted(
        (r for r in csv.DictReader(open(manifest)) if r["split"] == "test"),
        key=lambda r: r["path"],
    )
    meta_path = os.path.join(shared, "covid-chestxray-dataset", "metadata.csv")
    cohen = {r["filename"]: r for r in csv.DictReader(open(meta_path))}
    os.makedirs(out, exist_ok=True)
    entries = []
    for stem, label, population, source, title in CASES:
        for r in rows:
            if (r["label"], r["population"], r["source"]) != (label, population, source):
                continue
            name = os.path.basename(r["path"])
            if source == "cohen":
                m = cohen.get(name)
                if m is None or m["license"].strip() not in REDISTRIBUTABLE:
                    continue
                credit = f"COVID-19 image data collection (Cohen et al.); {m['doi'] or m['url']}"
                licence = m["license"].strip()
            else:
                credit, licence = COLLECTIONS[source]
            break
        else:
            raise SystemExit(f"no redistributable test image for {stem}")
        data, ext, resized = fitted(r["path"])
        file = stem + ext
        with open(os.path.join(out, file), "wb") as f:
            f.write(data)
        entries.append({
            "file": file,
            "title": title,
            "label": label,
            "population": population,
            "source": source,
            "original": os.path.relpath(r["path"], shared),
            "patient": r["patient"],
            "split": "test",
            "licence": licence,
            "credit": credit,
            "resized": resized,
            "bytes": len(data),
        })
        print(f"{file}: {r['path']} ({len(data)} bytes{', re-encoded' if resized else ''})")
    with open(os.path.join(out, "examples.json"), "w") as f:
        json.dump({
            "note": "X-rays of the test split of the default model's data (never trained or "
                    "tuned on), the first eligible one of each case by path; see "
                    "tools/make_examples.py",
            "examples": entries,
        }, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
