"""Bring your own model (docs/models.md): a TorchScript file, an ONNX file, ``module:callable`` and
``torchvision:ARCH --weights FILE`` each through ``testbed classify``, ``testbed attack digital`` (FGSM equal to the
same attack on the original torch module) and ``testbed patch``; model cards and the user models file; bad input."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pipelines.main import main

ARCH = "squeezenet1_1"  # a real torchvision architecture that is fast at 32 x 32 on a CPU
SIZE = 32
LABELS = ["cat", "dog", "car", "sign"]
MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
OPTS = ["--input-size", "32", "32", "--mean", *map(str, MEAN), "--std", *map(str, STD)]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """The same seeded network as a state dict, a TorchScript file, an ONNX file and a Python module."""
    import torchvision

    d = tmp_path_factory.mktemp("byom")
    torch.manual_seed(0)
    net = torchvision.models.get_model(ARCH, num_classes=len(LABELS)).eval()
    with torch.no_grad():  # squeezenet starts with zero biases; random ones make every output class matter
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d) and m.bias is not None:
                m.bias.uniform_(-0.1, 0.1)
    torch.save(net.state_dict(), d / "net.pth")
    with warnings.catch_warnings():  # torch's deprecation notices for jit and the TorchScript-based ONNX export
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(net), d / "net_ts.pt")
        torch.onnx.export(net, torch.rand(1, 3, SIZE, SIZE), d / "net.onnx", dynamo=False, opset_version=17,
                          do_constant_folding=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    (d / "labels.txt").write_text("\n".join(LABELS) + "\n")
    (d / "byom_test_models.py").write_text(
        "import torch, torchvision\n"
        "def build():\n"
        f"    net = torchvision.models.get_model({ARCH!r}, num_classes={len(LABELS)})\n"
        f"    net.load_state_dict(torch.load({str(d / 'net.pth')!r}, weights_only=True))\n"
        "    return net\n")
    scenes = d / "scenes"
    scenes.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray((rng.random((40, 48, 3)) * 255).astype(np.uint8)).save(scenes / f"s{i}.png")
    return {"dir": d, "net": net}


def _specs(d):
    return {
        "torchvision": [f"torchvision:{ARCH}", "--weights", str(d / "net.pth")],
        "torchscript": [str(d / "net_ts.pt")],
        "onnx": [str(d / "net.onnx")],
        "callable": ["byom_test_models:build"],
    }


def _model_args(made, kind):
    d = made["dir"]
    return ["--model", *_specs(d)[kind], *OPTS, "--labels", str(d / "labels.txt")]


def _reference(made):
    from testbed.models.base import NormalizedModel

    return NormalizedModel(made["net"], MEAN, STD).eval()


@pytest.fixture(autouse=True)
def fresh_session():
    """Each test starts with no model named on an earlier in-process command line."""
    from testbed.models import external

    external._SESSION.clear()
    yield
    external._SESSION.clear()


@pytest.fixture
def on_path(made, monkeypatch):
    monkeypatch.syspath_prepend(str(made["dir"]))


@pytest.mark.parametrize("kind", ["torchvision", "torchscript", "onnx", "callable"])
def test_model_through_classify_attack_and_patch(made, kind, on_path, tmp_path, capsys, monkeypatch):
    from physical.attacks.registry import build_attack_in_units
    from testbed.imageio import load_image
    from testbed.photos import center_crop

    monkeypatch.setenv("TESTBED_DEVICE", "cpu")  # compared with the CPU reference to 1e-5 (no cuDNN rounding)
    d = made["dir"]
    ref = _reference(made)
    # classify: the same top-5 as the original module, over a folder of scenes
    assert main(["classify", str(d / "scenes"), *_model_args(made, kind)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    x0 = load_image(d / "scenes" / "s0.png")
    x = center_crop(F.interpolate(x0, size=round(SIZE * 256 / 224), mode="bilinear", antialias=True).clamp(0, 1),
                    SIZE)
    with torch.no_grad():
        top = LABELS[int(ref(x).argmax())]
    assert lines[0].split(": ", 1)[1].startswith(top + " ")

    # attack digital: FGSM equal to FGSM on the original module
    out = tmp_path / "fgsm"
    assert main(["attack", "digital", "--attack", "fgsm", "--eps", "8", "--image", str(d / "scenes" / "s0.png"),
                 "--out", str(out), *_model_args(made, kind)]) == 0
    pert = torch.from_numpy(np.load(out / "perturbation.npy"))
    x = x.contiguous()
    with torch.no_grad():
        label = ref(x).argmax(1)
    expected = build_attack_in_units("fgsm", eps=8, seed=0)(ref, x, label).perturbation
    assert pert.shape == expected.shape
    assert float((pert - expected).abs().max()) <= 1e-5
    assert float(pert.abs().max()) > 0

    # patch: a few steps, a tiny evaluation, scenes from a folder
    out = tmp_path / "patch"
    assert main(["patch", "--untargeted", "--scenes", str(d / "scenes"), "--steps", "2", "--batch-size", "2",
                 "--eval", "4", "--eval-batch-size", "4", "--out", str(out), *_model_args(made, kind)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_samples"] == 4 and len(metrics["scenes"]) == 3


def test_get_model_api_and_normalisation_layer(made):
    from testbed.models.registry import get_model

    d = made["dir"]
    model = get_model(str(d / "net.onnx"), device="cpu", input_size=(SIZE, SIZE), mean=MEAN, std=STD,
                      labels=LABELS)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert torch.allclose(model.normalize.mean.flatten(), torch.tensor(MEAN))
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(model(x), _reference(made)(x), atol=1e-5)


def test_model_card_registers_a_user_model(made, tmp_path, monkeypatch, capsys):
    d = made["dir"]
    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path / "cache"))
    card = d / "card.yaml"
    card.write_text(f"name: my-squeeze\nmodel: net_ts.pt\ninput_size: [{SIZE}, {SIZE}]\nmean: {list(MEAN)}\n"
                    f"std: {list(STD)}\nlabels: labels.txt\ndescription: a test model\n")
    # a card works directly as --model ...
    assert main(["classify", str(d / "scenes" / "s1.png"), "--model", str(card)]) == 0
    direct = capsys.readouterr().out
    # ... and, once added, by its name in later commands
    assert main(["models", "add", str(card)]) == 0
    assert "my-squeeze" in capsys.readouterr().out
    assert main(["models", "list"]) == 0
    assert any(line.startswith("my-squeeze") for line in capsys.readouterr().out.splitlines())
    assert main(["classify", str(d / "scenes" / "s1.png"), "--model", "my-squeeze"]) == 0
    assert capsys.readouterr().out == direct
    assert main(["models", "show", "my-squeeze"]) == 0
    assert json.loads(capsys.readouterr().out)["num_labels"] == len(LABELS)
    # the user models file lives under the one cache root
    assert (tmp_path / "cache" / "user_models.json").is_file()
    assert main(["models", "add", str(card)]) == 0  # the same card again: idempotent
    assert main(["models", "remove", "my-squeeze"]) == 0
    assert main(["classify", "chelsea", "--model", "my-squeeze"]) == 2


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_bad_input_exits_2_with_one_line(made, tmp_path, capsys, on_path):
    d = made["dir"]
    img = str(d / "scenes" / "s0.png")
    labels = str(d / "labels.txt")
    cases = {
        "does not exist": ["--model", str(tmp_path / "missing.onnx"), *OPTS, "--labels", labels],
        "unknown torchvision architecture": ["--model", "torchvision:nonet", "--weights", str(d / "net.pth")],
        "state --labels": ["--model", str(d / "net_ts.pt"), *OPTS],
        "only for a model outside the registry": ["--model", "mobilenet_v2", "--input-size", "32", "32"],
    }
    three = tmp_path / "three.txt"
    three.write_text("a\nb\nc\n")
    cases["(batch, 3) logits"] = ["--model", str(d / "net_ts.pt"), *OPTS, "--labels", str(three)]
    bad_utf8 = tmp_path / "latin1.txt"
    bad_utf8.write_bytes("caf\xe9\nb\nc\nd\n".encode("latin-1"))
    cases["not UTF-8"] = ["--model", str(d / "net_ts.pt"), *OPTS, "--labels", str(bad_utf8)]
    wrong_size = ["--model", str(d / "net.onnx"), "--input-size", "4", "4", "--mean", *map(str, MEAN), "--std",
                  *map(str, STD), "--labels", labels]
    cases["fails on a (2, 3, 4, 4) batch"] = wrong_size
    pickled = tmp_path / "whole.pt"
    torch.save(made["net"], pickled)  # a whole-model pickle: never unpickled
    cases["refused"] = ["--model", str(pickled), *OPTS, "--labels", labels]
    cases["does not fit"] = ["--model", "torchvision:resnet18", "--weights", str(d / "net.pth"), "--labels", labels]
    cases["cannot be imported"] = ["--model", "no_such_module_xyz:build", *OPTS, "--labels", labels]
    for expected, args in cases.items():
        assert main(["classify", img, *args]) == 2, expected
        err = _err(capsys)
        assert expected in err, (expected, err)


def test_torchvision_weights_from_the_hub_cache(tmp_path, monkeypatch, capsys):
    """torchvision:ARCH with no --weights: its own weights from torch hub's cache, read with weights_only=True;
    ImageNet input size, mean/std and labels by default: the same top-5 as the registry's mobilenet_v2."""
    assert main(["classify", "chelsea", "--model", "mobilenet_v2"]) == 0
    registry = capsys.readouterr().out
    assert main(["classify", "chelsea", "--model", "torchvision:mobilenet_v2"]) == 0
    assert capsys.readouterr().out == registry
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))  # nothing cached, and nothing is downloaded
    assert main(["classify", "chelsea", "--model", "torchvision:mobilenet_v2"]) == 2
    assert "not in torch hub's cache" in _err(capsys)


def test_code_runs_only_when_named_by_the_user(made, on_path, tmp_path, capsys):
    """A card naming module:callable imports code when given as --model (the user's own command line), never when
    its path is read from a config or a run directory (get_entry without the command line)."""
    from testbed.errors import ConfigError
    from testbed.models.registry import get_entry

    d = made["dir"]
    card = tmp_path / "code_card.yaml"
    card.write_text(f"model: byom_test_models:build\ninput_size: [{SIZE}, {SIZE}]\nmean: {list(MEAN)}\n"
                    f"std: {list(STD)}\nlabels: {d / 'labels.txt'}\n")
    with pytest.raises(ConfigError, match="names Python code"):
        get_entry(str(card))
    with pytest.raises(ConfigError, match="outside the registry"):
        get_entry("byom_test_models:build")
    assert main(["classify", str(d / "scenes" / "s0.png"), "--model", str(card)]) == 0
    assert capsys.readouterr().out.startswith(str(d / "scenes" / "s0.png"))
