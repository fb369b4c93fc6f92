"""Test-only: PyTorch's gradients of depthwise convolutions, the reference for the project's own
depthwise operation (trainer/tests/depthwise.rs).

For each case (kernel, stride, input side, padding top/bottom/left/right), writes to OUT/:
CASE_x.npy [2, C, H, W], CASE_w.npy [C, 1, K, K], CASE_g.npy (the upstream gradient, the
output's shape), and PyTorch's CASE_y.npy, CASE_gx.npy, CASE_gw.npy, in float64 arithmetic
then stored as float32. Prints the case names.

Usage: python make_fixtures.py OUT
"""
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

CASES = {
    "k3s1": (3, 1, 12, (1, 1, 1, 1)),
    "k3s2same": (3, 2, 12, (0, 1, 0, 1)),
    "k5s2same": (5, 2, 13, (1, 2, 1, 2)),
    "k5s1": (5, 1, 10, (2, 2, 2, 2)),
    "k3s2": (3, 2, 11, (1, 1, 1, 1)),
}


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    channels = 16
    for name, (k, s, size, (top, bottom, left, right)) in CASES.items():
        x = torch.randn(2, channels, size, size, generator=gen).float()
        w = torch.randn(channels, 1, k, k, generator=gen).float()
        xd = x.double().requires_grad_()
        wd = w.double().requires_grad_()
        y = F.conv2d(F.pad(xd, (left, right, top, bottom)), wd, stride=s, groups=channels)
        g = torch.randn(y.shape, generator=gen).float()
        y.backward(g.double())
        for tag, t in [("x", x), ("w", w), ("g", g), ("y", y.detach()), ("gx", xd.grad), ("gw", wd.grad)]:
            np.save(out / f"{name}_{tag}.npy", t.detach().float().numpy())
        print(name)


if __name__ == "__main__":
    main()
