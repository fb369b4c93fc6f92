"""Draws the Grad-CAM grid of the model card: the page's example X-rays (licensed, in the test
split, chosen without looking at any answer) explained by each model given, side by side, each
panel with the lung outline the model file's segmenter draws and the map's share inside it.

    python tools/gradcam_grid.py --pneumoscope BIN --out docs/gradcam-grid.png \
        "before=web/models/A.pneumoscope" "after=web/models/B.pneumoscope"

Every panel comes from `pneumoscope gradcam` (the predicted class's map over the view the
network sees); nothing here computes a map. Needs Pillow (the test environment has it).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

from PIL import Image, ImageDraw, ImageFont

PANEL = 260
CAPTION = 58


def font(size):
    for path in ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",):
        if os.path.exists(path):
            return ImageFont.truetype(path, size)
    return ImageFont.load_default()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pneumoscope", required=True, help="the pneumoscope binary")
    ap.add_argument("--examples", default="web/examples", help="folder with examples.json")
    ap.add_argument("--out", required=True, help="PNG to write")
    ap.add_argument("models", nargs="+", help="LABEL=MODEL_FILE, one column each")
    a = ap.parse_args()
    models = [m.split("=", 1) for m in a.models]
    if any(len(m) != 2 for m in models):
        sys.exit("each model is LABEL=FILE")
    examples = json.load(open(os.path.join(a.examples, "examples.json")))["examples"]
    small, big = font(13), font(15)
    head = 46
    grid = Image.new("RGB", (170 + PANEL * len(models), head + len(examples) * (PANEL + CAPTION)), "white")
    draw = ImageDraw.Draw(grid)
    for j, (label, _) in enumerate(models):
        # A label "a: b" is drawn on two lines ("a:" above "b").
        for k, part in enumerate(label.replace(": ", ":\n", 1).split("\n")):
            draw.text((170 + j * PANEL + 6, 4 + 19 * k), part, fill="black", font=small if k else big)
    rows = []
    # The probabilities, from `predict` (Grad-CAM's own score is the class's logit).
    probs = {}
    files = [os.path.join(a.examples, ex["file"]) for ex in examples]
    for label, model in models:
        out = subprocess.run([a.pneumoscope, "predict", "--model", model, *files], check=True, capture_output=True, text=True).stdout
        for line in out.strip().splitlines():
            p = json.loads(line)
            probs[(label, os.path.basename(p["file"]))] = p["probabilities"]
    with tempfile.TemporaryDirectory() as tmp:
        for i, ex in enumerate(examples):
            y = head + i * (PANEL + CAPTION)
            title = ex["title"].split(", ", 1)
            for k, part in enumerate(title):
                draw.text((6, y + PANEL // 2 - 30 + 18 * k), part, fill="black", font=big)
            draw.text((6, y + PANEL // 2 - 24 + 18 * len(title)), f"labelled {ex['label']}", fill="#444444", font=small)
            for j, (label, model) in enumerate(models):
                out = os.path.join(tmp, f"{i}-{j}.png")
                line = subprocess.run(
                    [a.pneumoscope, "gradcam", "--model", model, os.path.join(a.examples, ex["file"]), "--out", out],
                    check=True, capture_output=True, text=True,
                ).stdout.strip().splitlines()[-1]
                r = json.loads(line)
                panel = Image.open(r["overlay"]).convert("RGB").resize((PANEL, PANEL))
                x = 170 + j * PANEL
                grid.paste(panel, (x, y))
                share = r.get("lung_share")
                reason = r.get("lung_reason")
                p = probs[(label, ex["file"])][r["top"]]
                text = f"{r['top']} ({p:.0%})"
                second = "lung share " + (f"{share:.2f}" if share is not None else "–") + (f" ({reason})" if reason else "")
                draw.text((x + 4, y + PANEL + 4), text, fill="black", font=small)
                draw.text((x + 4, y + PANEL + 22), second[:40], fill="#444444", font=small)
                rows.append({"example": ex["file"], "model": label, "top": r["top"], "probability": p, "lung_share": share})
    grid.save(a.out)
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
