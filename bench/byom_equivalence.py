"""Bring your own model: the same seeded torchvision network as a state dict (torchvision:ARCH --weights), a
TorchScript file and an ONNX file (onnx2torch) against the original torch module: logits and FGSM perturbations.

    OMP_NUM_THREADS=1 .venv/bin/python bench/byom_equivalence.py [--out-dir /tmp/byom]

Prints, per architecture and form, the load time, max |logit difference| and how many FGSM signs differ
(docs/models.md, "Bring your own model").
"""
from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torchvision

from physical.attacks.registry import build_attack_in_units
from testbed.models.base import NormalizedModel
from testbed.models.registry import get_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default=None, help="where the model files are written (default: a temp folder)")
    args = ap.parse_args()
    out = Path(args.out_dir or tempfile.mkdtemp(prefix="byom-"))
    out.mkdir(parents=True, exist_ok=True)
    warnings.simplefilter("ignore")  # torch's deprecation notices for jit and the TorchScript-based ONNX export
    torch.manual_seed(0)
    labels = [f"c{i}" for i in range(10)]
    mean, std = (0.5,) * 3, (0.25,) * 3
    for arch, size in (("resnet18", 64), ("mobilenet_v3_small", 64)):
        net = torchvision.models.get_model(arch, num_classes=len(labels)).eval()
        torch.save(net.state_dict(), out / f"{arch}.pth")
        torch.jit.save(torch.jit.script(net), out / f"{arch}_ts.pt")
        torch.onnx.export(net, torch.rand(1, 3, size, size), out / f"{arch}.onnx", dynamo=False, opset_version=17,
                          do_constant_folding=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
        ref = NormalizedModel(net, mean, std).eval()
        x = torch.rand(8, 3, size, size, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            y = ref(x).argmax(1)
        fgsm = build_attack_in_units("fgsm", eps=8)
        expected = fgsm(ref, x, y).perturbation
        forms = {"torchvision": (f"torchvision:{arch}", {"weights": str(out / f"{arch}.pth")}),
                 "torchscript": (str(out / f"{arch}_ts.pt"), {}), "onnx": (str(out / f"{arch}.onnx"), {})}
        for form, (spec, extra) in forms.items():
            t0 = time.perf_counter()
            model = get_model(spec, device="cpu", input_size=(size, size), mean=mean, std=std, labels=labels, **extra)
            load_s = time.perf_counter() - t0
            with torch.no_grad():
                diff = float((model(x) - ref(x)).abs().max())
            pert = fgsm(model, x, y).perturbation
            print(f"{arch:20s} {form:12s} load {load_s:.2f} s  max|logit diff| {diff:.2e}  "
                  f"FGSM signs differing {int((pert != expected).sum())}/{pert.numel()}")


if __name__ == "__main__":
    main()
