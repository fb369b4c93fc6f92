"""Independent check of the lung share of a Grad-CAM map (numpy, PIL).

Arguments: heat.npy (the map as shown, over the classifier's centre crop), lungs.npy (the
dilated lung mask the project used, on the same crop), mask.png (the segmenter's mask at the
image's size, from `pneumoscope lungs predict`), resize, crop, dilation (grid pixels of 128).

Prints JSON: the share from the exported map and mask; the share recomputed from the
full-size mask PNG (its own crop and dilation); how well the two crop masks agree.
"""
import json
import sys

import numpy as np
from PIL import Image

heat = np.load(sys.argv[1]).astype(np.float64)
used = np.load(sys.argv[2]) > 0.5
mask = np.array(Image.open(sys.argv[3]).convert("L")) >= 128
resize, crop, dilation = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])

h, w = mask.shape
side = heat.shape[0]
# The evaluation transform's centre crop, in image pixels.
span = min(w, h) * crop / resize
x0, y0 = (w - span) / 2, (h - span) / 2
# Square dilation by `dilation` cells of a 128 grid, in image pixels.
rx, ry = int(round(dilation * w / 128)), int(round(dilation * h / 128))
padded = np.pad(mask, ((ry, ry), (rx, rx)))
dil = np.zeros_like(mask)
for dy in range(-ry, ry + 1):
    for dx in range(-rx, rx + 1):
        dil |= padded[ry + dy : ry + dy + h, rx + dx : rx + dx + w]
centres = (np.arange(side) + 0.5) / side * span
xs = np.clip((x0 + centres).astype(int), 0, w - 1)
ys = np.clip((y0 + centres).astype(int), 0, h - 1)
mine = dil[np.ix_(ys, xs)]

pos = np.maximum(heat, 0)
print(json.dumps({
    "share_exported": float((pos * used).sum() / pos.sum()),
    "share_independent": float((pos * mine).sum() / pos.sum()),
    "crop_mask_agreement": float((mine == used).mean()),
}))
