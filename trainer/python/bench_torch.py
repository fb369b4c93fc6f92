"""PyTorch reference for `pneumoscope bench`: inference and training-step throughput of the same
architecture (with the paper's head) on the same shapes, on the CPU or CUDA. Prints one JSON
object.

Usage: python bench_torch.py ARCH BATCH ITERS SIZE [cpu|cuda]
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


def paper_head(n):
    return torch.nn.Sequential(
        torch.nn.Linear(n, 256),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(256, 4),
    )


def torchvision_model(arch):
    """torchvision's network with the paper's head in place of its last layer (MobileNetV3: the
    whole classifier; SqueezeNet: a 1x1 convolution to the classes)."""
    import torchvision

    if arch == "googlenet":
        m = torchvision.models.googlenet(weights=None, aux_logits=False, transform_input=True, init_weights=False)
    else:
        m = getattr(torchvision.models, arch)(weights=None)
    if arch in ("alexnet", "vgg16"):
        m.classifier[6] = paper_head(4096)
    elif arch in ("mobilenet_v2", "mnasnet1_0"):
        m.classifier[1] = paper_head(1280)
    elif arch == "mobilenet_v3_large":
        m.classifier = paper_head(960)
    elif arch == "squeezenet1_0":
        m.classifier[1] = torch.nn.Conv2d(512, 4, kernel_size=1)
    elif arch == "densenet161":
        m.classifier = paper_head(m.classifier.in_features)
    else:  # googlenet, resnets, shufflenet
        m.fc = paper_head(m.fc.in_features)
    return m


def build(arch):
    if arch not in ARCHS:
        return torchvision_model(arch)
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
    device = sys.argv[5] if len(sys.argv) > 5 else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        device = "cpu"  # said in the output
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    model = build(arch).to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 4, (batch,), device=device)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    model.eval()
    with torch.no_grad():
        model(x)
        sync()
        t = time.perf_counter()
        for _ in range(iters):
            model(x)
        sync()
        infer = batch * iters / (time.perf_counter() - t)

    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()

    step()
    sync()
    t = time.perf_counter()
    for _ in range(iters):
        step()
    sync()
    train = batch * iters / (time.perf_counter() - t)
    print(json.dumps({
        "inference_img_s": infer,
        "train_img_s": train,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
    }))


if __name__ == "__main__":
    main()
