"""The print's grain (camera.simulated.PrinterParams.grain): a seeded, mean-1 multiplicative reflectance field with a
stated correlation length, recorded per print so a photo replays; off by default, leaving every photo as before."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from camera.simulated import (PrintPhotoConfig, PrinterParams, SimulatedPrinter, print_photograph,
                              replay_print_photograph)
from testbed.errors import ConfigError


def test_grain_field_has_the_stated_std_mean_and_correlation_length():
    printer = SimulatedPrinter(PrinterParams(grain=0.2, grain_mm=0.25, grain_seed=7))
    field = printer.grain_field((600, 600), raster_dpi=300)  # sigma = 0.25 mm = 2.95 raster px
    assert field.dtype == np.float32 and field.shape == (600, 600)
    assert abs(float(field.mean()) - 1) < 0.01 and abs(float(field.std()) - 0.2) < 0.01
    d = field - field.mean()
    near = float((d[:, 1:] * d[:, :-1]).mean() / d.var())  # neighbours 0.085 mm apart: strongly correlated
    far = float((d[:, 12:] * d[:, :-12]).mean() / d.var())  # 1 mm apart: nearly independent
    assert near > 0.9 and abs(far) < 0.1
    # seeded: the same seed, the same field; another seed, another one
    again = SimulatedPrinter(PrinterParams(grain=0.2, grain_mm=0.25, grain_seed=7)).grain_field((600, 600), 300)
    other = SimulatedPrinter(PrinterParams(grain=0.2, grain_mm=0.25, grain_seed=8)).grain_field((600, 600), 300)
    assert np.array_equal(field, again) and not np.array_equal(field, other)
    assert SimulatedPrinter(PrinterParams()).grain_field((8, 8), 300) is None


def test_grain_keeps_the_printed_tone_on_average_and_adds_its_fluctuation():
    page = np.full((400, 400, 3), 150, np.uint8)
    plain = SimulatedPrinter(PrinterParams(halftone_cell=8, halftone_screen="clustered")).print_u8(page, 2)
    grainy = SimulatedPrinter(PrinterParams(halftone_cell=8, halftone_screen="clustered", grain=0.15,
                                            grain_seed=1)).print_u8(page, 2)
    assert abs(float(grainy.mean()) / float(plain.mean()) - 1) < 0.02
    local = lambda a: a.reshape(100, 4, 100, 4, 3).mean((1, 3))  # per 4 x 4 raster px (one screen cell)
    assert local(grainy).std() > 0.1 * float(plain.mean()) > local(plain).std()


@pytest.mark.parametrize("kw, match", [({"grain": -0.1}, "grain must be"), ({"grain": 0.9}, "grain must be"),
                                       ({"grain": True}, "grain must be"), ({"grain_mm": 0.0}, "grain_mm must be")])
def test_bad_grain_is_one_config_error(kw, match):
    with pytest.raises(ConfigError, match=match):
        PrinterParams(**kw).validate()
    with pytest.raises(ConfigError, match=match):
        PrintPhotoConfig(**kw).validate()


def test_print_photograph_with_grain_records_its_seed_and_replays():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g)
    common = dict(width_mm=30, frame_size=(480, 360), sample_printer=False, preset="kurakin-phone")
    plain = print_photograph(x, seed=3, keys=[0, 1], config=PrintPhotoConfig(**common))
    cfg = PrintPhotoConfig(grain=0.2, **common)
    grainy = print_photograph(x, seed=3, keys=[0, 1], config=cfg)
    recs = grainy.params
    assert [r["printer"]["grain"] for r in recs] == [0.2, 0.2] and recs[0]["printer"]["grain_seed"] != \
        recs[1]["printer"]["grain_seed"]  # one field per print
    assert "grain" not in plain.params[0]["printer"]  # no grain: not recorded (records as before)
    assert [r["camera"] for r in recs] == [r["camera"] for r in plain.params]  # the same photographer's draws
    assert not torch.equal(grainy.images, plain.images)
    record = json.loads(json.dumps(recs[1]))
    assert torch.equal(replay_print_photograph(x[1:2], record, cfg), grainy.images[1:2])


def test_in_situ_patch_with_grain_replays_and_keeps_the_draws_of_a_grainless_shot():
    from camera.simulated import InSituConfig, InSituPatch

    patch = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(1, 1, 32, 32)
    common = dict(frame_size=(320, 240), max_tilt_deg=0.0, roll_deg=(0.0, 0.0), zoom=(1.0, 1.0), aim=0.0)
    plain = InSituPatch(patch, mask, InSituConfig(**common)).shoot("brick", 7, 0)
    shooter = InSituPatch(patch, mask, InSituConfig(grain=0.2, **common))
    a = shooter.shoot("brick", 7, 0)
    assert a.params["printer"]["grain"] == 0.2 and "grain" not in plain.params["printer"]
    drawn = lambda p: {k: v for k, v in p.items() if k not in ("printer", "develop")}  # develop: measured on the frame
    assert drawn(a.params) == drawn(plain.params)  # every other draw as without grain
    assert not torch.equal(a.view, plain.view)
    b = shooter.replay(json.loads(json.dumps(a.params)))
    assert torch.equal(a.view, b.view)
