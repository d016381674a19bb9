"""Transfer matrix and the Papernot surrogate, on two tiny random CNNs (fast)."""
from __future__ import annotations

import json

import pytest
import torch

import pipelines.kinds  # noqa: F401  (registers the built-in experiment kinds)
from pipelines.experiment import parse_config, run_experiment
from pipelines.transfer import SurrogateConfig, summarise, train_surrogate
from test_experiment import TINY, register_tiny
from testbed.errors import ConfigError


def _cfg(**kw):
    register_tiny()
    cfg = {"name": "tiny-transfer", "kind": "transfer", "seed": 0, "models": [TINY, TINY + "-b"],
           "attacks": ["fgsm", "bim", "iter_ll", "random_sign"], "eps": [16],
           "images": {"names": ["chelsea", "coffee", "rocket"], "crops_per_photo": 2},
           "channel": {"kind": "none"}, "batch_size": 6, "surrogate": {"rounds": 1, "epochs": 3, "input_size": 16,
                                                                       "width": 4}}
    cfg.update(kw)
    return cfg


def test_transfer_matrix_and_surrogate(tmp_path):
    s = run_experiment(_cfg(), tmp_path / "t", progress=False)
    # 1 clean + 2 sources x 4 attacks x 1 eps + 2 surrogates
    assert len(s.computed) == 1 + 8 + 2
    res = summarise(s.cells)
    assert res["targets"] == [TINY, TINY + "-b"]
    for t in res["targets"]:  # labels are the target's own answers on the canonical views: crop 0 always agrees
        assert res["clean"][t]["top1"]["k"] >= 3 and res["clean"][t]["top1"]["n"] == 6
    rows = {(r["source"], r["attack"], r["target"]): r for r in res["matrix"]}
    assert len(rows) == 2 * 4 * 2
    # white box beats random noise of the same size on the source itself
    for src in (TINY, TINY + "-b"):
        assert rows[(src, "bim", src)]["top1"]["k"] <= rows[(src, "random_sign", src)]["top1"]["k"]
        assert rows[(src, "bim", src)]["top1"]["k"] <= 1
    sur = [r for r in res["surrogate"] if r["target"] == TINY]
    assert len(sur) == 3 and all(r["queries"] == 2 * 6 * 2 for r in sur)  # (images + flips) x (1 + 1 round)
    rep = json.loads((tmp_path / "t" / "report.json").read_text())
    assert rep["transfer"]["matrix"] and (tmp_path / "t" / "plots" / "transfer_eps16.png").is_file()
    md = (tmp_path / "t" / "report.md").read_text()
    assert "white box" in md and "Papernot" in md


def test_surrogate_learns_oracle_answers():
    register_tiny()
    from testbed.models.registry import get_model

    target = get_model(TINY, device="cpu")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(24, 3, 32, 32, generator=g)
    sur, classes, stats = train_surrogate(target, x, SurrogateConfig(rounds=1, epochs=30, input_size=16, width=8), 0)
    assert stats["queries"] == 96 and stats["training_set"] == 96
    assert set(classes) >= set(target(x).argmax(1).tolist())
    assert stats["train_agreement"] > 0.5  # learnt from answers only


def test_transfer_config_errors():
    with pytest.raises(ConfigError, match="surrogate: unknown key"):
        parse_config(_cfg(surrogate={"depth": 3}))
    with pytest.raises(ConfigError, match="random_sign"):
        parse_config({**_cfg(), "kind": "kurakin"})
    with pytest.raises(ConfigError, match="one input size"):
        _build(_cfg(models=["mobilenet_v2", TINY], surrogate=None))


def _build(raw):
    import tempfile

    from pipelines.experiment import RunDir
    from pipelines.transfer import build_cells

    cfg = parse_config(raw)
    with tempfile.TemporaryDirectory() as d:
        build_cells(cfg, RunDir(d + "/r", cfg))
