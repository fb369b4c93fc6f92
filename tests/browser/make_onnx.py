"""Test-only: the ONNX reference model for the in-browser speed comparison with onnxruntime-web.

EfficientNet-Lite0 as timm defines it (tf_efficientnet_lite0, TF "same" padding) with the
published ImageNet weights, the paper's head (Linear 1280->256, ReLU, Dropout, Linear 256->4),
exported for a 1x3x224x224 input. The same network and shapes as the shipped default model (its
head weights differ; this file exists only to time onnxruntime-web on the same computation).

Usage: python make_onnx.py WEIGHTS.pth OUT.onnx
"""
import sys

import timm
import torch


def main():
    weights, out = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    published = torch.load(weights, map_location="cpu", weights_only=False)
    ours = model.state_dict()
    if len(published) != len(ours):
        sys.exit(f"{weights}: {len(published)} tensors, timm expects {len(ours)}")
    mapped = {}
    for (k, v), (name, p) in zip(ours.items(), published.items()):
        if tuple(v.shape) != tuple(p.shape):
            sys.exit(f"{weights}: {name} has shape {tuple(p.shape)}, timm's {k} {tuple(v.shape)}")
        mapped[k] = p
    model.load_state_dict(mapped)
    model.reset_classifier(0)
    net = torch.nn.Sequential(
        model,
        torch.nn.Linear(model.num_features, 256),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(256, 4),
    ).eval()
    x = torch.randn(1, 3, 224, 224)
    torch.onnx.export(net, (x,), out, input_names=["input"], output_names=["logits"],
                      opset_version=17, dynamo=False)
    print(out)


if __name__ == "__main__":
    main()
