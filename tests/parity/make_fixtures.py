"""Parity fixtures of the torchvision architectures, for tests/parity.rs.

For each architecture: random-init weights in torchvision's own configuration (GoogLeNet as its
published weights use it: auxiliary classifiers present, transform_input on), with non-trivial
batch-norm statistics, saved the way torchvision's files are published; a fixed input; the
logits of torchvision's model in eval mode; and the Grad-CAM of the top class at the documented
target layer, twice: the raw map computed with PyTorch autograd at the layer's resolution, and
pytorch-grad-cam's map (upsampled to the input, min-max scaled).

Usage: make_fixtures.py OUT_DIR [ARCH...]
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from safetensors.torch import save_file

torch.set_num_threads(2)


def build(name):
    m = torchvision.models
    if name == "googlenet":
        return m.googlenet(weights=None, aux_logits=True, transform_input=True, init_weights=True)
    return getattr(m, name)(weights=None)


def target_layer(name, model):
    """The Grad-CAM target of each architecture (documented in src/arch/mod.rs)."""
    return {
        "alexnet": lambda: model.features[11],
        "vgg16": lambda: model.features[29],
        "googlenet": lambda: model.inception5b,
        "resnet50": lambda: model.layer4,
        "wide_resnet50_2": lambda: model.layer4,
        "resnext50_32x4d": lambda: model.layer4,
        "densenet161": lambda: model.features,  # + the ReLU of forward(); see relu_after
        "squeezenet1_0": lambda: model.features[12],
        "shufflenet_v2_x1_0": lambda: model.conv5,
        "mobilenet_v2": lambda: model.features[18],
        "mobilenet_v3_large": lambda: model.features[16],
        "mnasnet1_0": lambda: model.layers[16],
    }[name]()


class DenseNetCam(torch.nn.Module):
    """DenseNet with its forward's ReLU as a module, so hooks see the post-ReLU map."""

    def __init__(self, m):
        super().__init__()
        self.features, self.classifier = m.features, m.classifier
        self.relu = torch.nn.ReLU()

    def forward(self, x):
        a = self.relu(self.features(x))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(a, 1), 1))


def randomise_batchnorm(model, gen):
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            c = mod.num_features
            mod.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
            mod.running_var.copy_(0.5 + torch.rand(c, generator=gen))
            mod.weight.data.copy_(1.0 + 0.1 * torch.randn(c, generator=gen))
            mod.bias.data.copy_(0.1 * torch.randn(c, generator=gen))


def save(name, state, out):
    """As torchvision publishes them: zip .pth, except one legacy .pth (AlexNet), one
    .safetensors (ResNet-50) and DenseNet with its pre-0.4 `norm.1` key style."""
    state = {k: v.contiguous() for k, v in state.items()}
    if name == "densenet161":
        import re

        pat = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))([12])\.(weight|bias|running_mean|running_var)$")
        state = {pat.sub(r"\1.\2.\3", k): v for k, v in state.items()}
    if name == "resnet50":
        path = out / f"{name}.safetensors"
        save_file(state, str(path))
    elif name == "alexnet":
        path = out / f"{name}.pth"
        torch.save(state, path, _use_new_zipfile_serialization=False)
    else:
        path = out / f"{name}.pth"
        torch.save(state, path)
    return path.name


def make(name, out, seed):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = build(name)
    with torch.no_grad():
        randomise_batchnorm(model, gen)
    model.eval()
    weights = save(name, model.state_dict(), out)
    x = torch.randn(1, 3, 224, 224, generator=gen)
    with torch.no_grad():
        logits = model(x)
    top = int(logits.argmax())

    cam_model = DenseNetCam(model).eval() if name == "densenet161" else model
    layer = cam_model.relu if name == "densenet161" else target_layer(name, model)
    store = {}
    h = layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    xg = x.clone()
    y = cam_model(xg)
    a = store["a"]
    g = torch.autograd.grad(y[0, top], a)[0]
    h.remove()
    w = g.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((w * a).sum(1))[0].detach().numpy()
    if cam.max() > 0:
        cam = cam / cam.max()

    for mod in cam_model.modules():  # pytorch-grad-cam needs out-of-place ReLUs
        if isinstance(mod, torch.nn.ReLU):
            mod.inplace = False
    with GradCAM(model=cam_model, target_layers=[layer]) as gc:
        lib = gc(input_tensor=x, targets=[ClassifierOutputTarget(top)])[0]

    np.save(out / f"{name}_input.npy", x.numpy().astype(np.float32))
    np.save(out / f"{name}_logits.npy", logits.numpy().astype(np.float32))
    np.save(out / f"{name}_cam.npy", cam.astype(np.float32))
    np.save(out / f"{name}_cam_lib.npy", lib.astype(np.float32))
    meta = {"weights": weights, "class": top, "cam_shape": list(cam.shape)}
    (out / f"{name}.json").write_text(json.dumps(meta))
    print(name, weights, "top", top, "max|logit|", float(logits.abs().max()), flush=True)


ARCHS = [
    "alexnet",
    "vgg16",
    "googlenet",
    "resnet50",
    "wide_resnet50_2",
    "resnext50_32x4d",
    "densenet161",
    "squeezenet1_0",
    "shufflenet_v2_x1_0",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mnasnet1_0",
]

def gmacs(out):
    """Multiply-accumulates per image (convolutions and matrix products) of each network as
    published, at its input size: torchvision's and timm's definitions under PyTorch's counter."""
    import timm
    from torch.utils.flop_counter import FlopCounterMode

    def count(m, s):
        m.eval()
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            m(torch.zeros(1, 3, s, s))
        return fc.get_total_flops() / 2 / 1e9

    res = {}
    for name in ARCHS:
        kw = dict(aux_logits=False, init_weights=False) if name == "googlenet" else {}
        res[name] = count(getattr(torchvision.models, name)(weights=None, **kw), 224)
    for i, s in [(0, 224), (1, 240), (2, 260)]:
        res[f"efficientnet_lite{i}"] = count(timm.create_model(f"tf_efficientnet_lite{i}"), s)
    (out / "gmacs.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(ARCHS):
        if len(sys.argv) > 2 and name not in sys.argv[2:]:
            continue
        make(name, out, 1000 + i)
    gmacs(out)
    (out / "versions.json").write_text(
        json.dumps({"torch": torch.__version__, "torchvision": torchvision.__version__})
    )
