"""PyTorch reference for `pneumoscope bench`: inference and training-step throughput of the same
architecture on the same shapes, on the CPU. Prints one JSON object.

Usage: python bench_torch.py ARCH BATCH ITERS SIZE
"""
import json
import os
import sys
import time

import torch

ARCHS = {
    "efficientnet_lite0": ("timm", "tf_efficientnet_lite0"),
    "efficientnet_lite1": ("timm", "tf_efficientnet_lite1"),
    "efficientnet_lite2": ("timm", "tf_efficientnet_lite2"),
}


def build(arch):
    kind, name = ARCHS[arch]
    import timm

    model = timm.create_model(name, pretrained=False, num_classes=0)
    head = torch.nn.Sequential(
        torch.nn.Linear(model.num_features, 256),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(256, 4),
    )
    return torch.nn.Sequential(model, head)


def main():
    arch, batch, iters, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    model = build(arch)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 4, (batch,))

    model.eval()
    with torch.no_grad():
        model(x)
        t = time.perf_counter()
        for _ in range(iters):
            model(x)
        infer = batch * iters / (time.perf_counter() - t)

    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()

    step()
    t = time.perf_counter()
    for _ in range(iters):
        step()
    train = batch * iters / (time.perf_counter() - t)
    print(json.dumps({
        "inference_img_s": infer,
        "train_img_s": train,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
