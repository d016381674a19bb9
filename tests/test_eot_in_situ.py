"""experiments/eot_in_situ_10pct.yaml: the <= 10 % patch's EOT distribution for a patch photographed in situ by a
phone (issue 16; docs/harness.md, "Why the print-aware patch lost in situ").

The simulator (camera.simulated.InSituPatch) checks the EOT, it is never part of it: these tests compare the two
independent code paths' effect on the same scenes."""
from __future__ import annotations

from pathlib import Path

import torch

from physical.eot import EOTConfig, make_eot
from physical.universal import circle_mask
from testbed.photos import imagenet_view

torch.set_num_threads(1)

YAML = Path(__file__).resolve().parents[1] / "experiments" / "eot_in_situ_10pct.yaml"
SCENES = ["astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "grace_hopper", "coins", "brick"]


def _stats(x: torch.Tensor) -> torch.Tensor:
    """Per image: mean luma, luma std (contrast), mean chroma (max - min over RGB)."""
    y = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    return torch.stack([y.mean((1, 2)), y.std((1, 2)), (x.max(1).values - x.min(1).values).mean((1, 2))], 1)


def _coverage(cfg: EOTConfig | str, views: torch.Tensor, ratios: torch.Tensor, draws: int = 64) -> torch.Tensor:
    """Per in-situ photo and statistic: does its ratio to the scene's own view lie within the 1-99 % range of the
    same ratio over ``draws`` EOT draws of that scene (the scene photographed through the EOT, no patch; at
    half resolution: the ratios are global)?"""
    t = make_eot(cfg)
    k = views.shape[0]
    p = t.sample(draws * k, torch.Generator().manual_seed(1), torch.device("cpu"))
    small = torch.nn.functional.interpolate(views, scale_factor=0.5, mode="bilinear", antialias=True)
    x = t.apply(small.repeat_interleave(draws, 0), p, print_stage=False)
    r = (_stats(x) / _stats(small).repeat_interleave(draws, 0)).reshape(k, draws, 3)
    lo, hi = r.quantile(0.01, 1), r.quantile(0.99, 1)
    reps = ratios.shape[0] // k
    return (ratios >= lo.repeat(reps, 1)) & (ratios <= hi.repeat(reps, 1))


def test_in_situ_eot_brackets_the_phone_photo_where_print_aware_does_not() -> None:
    """The diagnosis behind the recipe: a phone photo of the scene (auto-exposure, black level, saturation boost,
    sharpening) is brighter, more contrasty and more saturated than the scene's own view; print-aware-10pct only
    ever makes the scene darker and greyer, so the in-situ photo lies outside it."""
    from camera.simulated import InSituConfig, InSituPatch

    patch = torch.rand(1, 3, 80, 80, generator=torch.Generator().manual_seed(0))
    shooter = InSituPatch(patch, circle_mask(80), InSituConfig())
    views = torch.cat([imagenet_view(s) for s in SCENES])
    shots = torch.cat([shooter.shoot(SCENES[i % len(SCENES)], 5, i, clean=True).clean_view for i in range(16)])
    ratios = _stats(shots) / _stats(views.repeat(2, 1, 1, 1))
    assert float(ratios[:, 2].median()) > 1.05  # the phone photo is more saturated than the scene's view
    ours = _coverage(EOTConfig.load(str(YAML)), views, ratios)
    legacy = _coverage("print-aware-10pct", views, ratios)
    assert float(ours[:, 0].float().mean()) >= 0.9  # brightness: (nearly) every photo within the in-situ EOT
    assert float(ours.all(1).float().mean()) >= 0.375  # all three statistics at once (measured 0.5)
    assert float(legacy[:, 1].float().mean()) <= 0.2  # print-aware never raises the contrast (measured 0.06)
    assert float(legacy.all(1).float().mean()) <= 0.2  # (measured 0.06)


def test_in_situ_eot_keeps_the_patch_within_its_10_percent() -> None:
    """scale <= 1 and perspective only move corners inward: a patch covering 10 % of the scene never covers more of
    what the model sees (200 draws of the whole geometry + light chain, patch mask as a white disc)."""
    cfg = EOTConfig.load(str(YAML))
    side = round((0.1 * 224 * 224 / float(circle_mask(80).mean())) ** 0.5)
    x = torch.zeros(1, 3, 224, 224)
    m = circle_mask(side)
    o = (224 - side) // 2
    x[..., o:o + side, o:o + side] = m
    assert abs(float(x[:, 0].mean()) - 0.1) < 0.003
    t = make_eot({**cfg.to_dict(), "brightness": 0.0, "contrast": [1.0, 1.0], "saturation": [1.0, 1.0],
                  "illuminant": 0.0, "noise": [0.0, 0.0], "blur": [0.0, 0.0], "printer_gain": 0.0,
                  "printer_offset": 0.0})
    p = t.sample(200, torch.Generator().manual_seed(3), torch.device("cpu"))
    frac = t.apply(x.expand(200, -1, -1, -1), p, print_stage=False)[:, 0].mean((1, 2))
    assert float(frac.max()) <= 0.1 + 0.003
    assert float(frac.min()) >= 0.1 * 0.8 ** 2 * 0.6  # shrunk by distance and tilt, never gone
