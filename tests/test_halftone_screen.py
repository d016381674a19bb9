"""The printer's halftone screens: the dispersed Bayer screen and the clustered-dot 45° screen of an office laser
(camera.simulated.clustered_dot_matrix), both mean-preserving, selectable by name everywhere a printer is built."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from camera.simulated import (PrintPhotoConfig, PrinterParams, SimulatedPrinter, bayer_matrix, clustered_dot_matrix,
                              print_photograph, replay_print_photograph)
from pipelines.channels import SimulatedChannel
from testbed.errors import ConfigError


def _ink_components(thresholds: np.ndarray, coverage: float, tiles: int = 4) -> int:
    """Connected ink clusters (8-connectivity) of a flat tone at ``coverage`` over ``tiles`` x ``tiles`` cells."""
    ink = (np.tile(thresholds, (tiles, tiles)) < coverage).astype(np.uint8)
    return cv2.connectedComponents(ink, connectivity=8)[0] - 1


def test_clustered_matrix_is_a_permutation_of_levels_grown_as_two_round_dots_per_cell():
    m = clustered_dot_matrix(8)
    assert np.allclose(np.sort(m.ravel()), (np.arange(64) + 0.5) / 64)
    # the first 8 dots inked are the 2 x 2 around the cell's centre and the 4 corner dots (the 45° lattice's two
    # dot centres; the corner dot is shared by 4 cells)
    first = m < 8 / 64
    assert first[3:5, 3:5].all() and first[[0, 0, 7, 7], [0, 7, 0, 7]].all() and first.sum() == 8
    # a quarter tone: clustered = two clusters per cell (corner dots shared across cells), Bayer = isolated dots
    clustered = _ink_components(m, 0.25)
    dispersed = _ink_components(bayer_matrix(8), 0.25)
    assert clustered <= 2 * 16 + 9  # 16 centre dots + the 3x3 interior corners + the cut ones at the tile edge
    assert dispersed >= 4 * clustered
    # the last holes to close are the points farthest from both centres: the middles of the cell's edges
    last = m >= 56 / 64
    assert last[[0, 0, 7, 7, 3, 4, 3, 4], [3, 4, 3, 4, 0, 0, 7, 7]].all()


@pytest.mark.parametrize("cell", [3, 6 + 1, 2, 0.5])
def test_clustered_cell_must_be_even_and_at_least_four(cell):
    with pytest.raises(ConfigError, match="even number of dots"):
        clustered_dot_matrix(cell)


@pytest.mark.parametrize("grey", [40, 128, 200])
def test_clustered_print_keeps_the_tone_as_the_exact_mean_of_its_dots(grey):
    """A flat tone over whole screen cells: the printed mean reflectance is black + (paper - black) x the paper
    fraction q / n^2 of the tone's coverage level, per channel, for both screens (the same tone curve)."""
    page = np.full((64, 64, 3), grey, np.uint8)
    means = {}
    for screen, n in (("clustered", 8), ("bayer", 16)):
        printer = SimulatedPrinter(PrinterParams(halftone_cell=n, halftone_screen=screen, dpi=600))
        out = printer.print_u8(page, dots_per_px=2)
        t = printer._tone_u8(page[:1, :1]).reshape(3)
        q = np.clip(np.ceil(t * -(n * n) + n * n - 0.5), 0, n * n)  # inked dots of n^2
        p = printer.params
        want = np.array(p.black) + (np.array(p.paper) - np.array(p.black)) * (1 - q / (n * n))
        np.testing.assert_allclose(out.reshape(-1, 3).astype(np.float64).mean(0), want, atol=1e-4)
        means[screen] = out
    # the clustered screen's texture is coarser: in mid and light tones it survives averaging over 2 x 2 raster
    # pixels (4 x 4 dots, half a cell), where the Bayer screen's dispersed dots average out
    if grey >= 128:
        blurred = {k: cv2.blur(v[..., 1], (2, 2))[4:-4, 4:-4].std() for k, v in means.items()}
        assert blurred["clustered"] > 3 * blurred["bayer"]


def test_the_screen_is_named_in_configs_and_refused_with_one_line_when_unknown():
    with pytest.raises(ConfigError, match="halftone screen must be one of"):
        PrinterParams(halftone_screen="fm").validate()
    with pytest.raises(ConfigError, match="halftone screen must be one of"):
        PrinterParams(halftone_cell=0, halftone_screen="fm").validate()
    with pytest.raises(ConfigError, match="halftone screen must be one of"):
        PrintPhotoConfig(halftone_screen="stochastic").validate()
    with pytest.raises(ConfigError, match="even number of dots"):
        PrintPhotoConfig(halftone_cell=5, halftone_screen="clustered").validate()
    ch = SimulatedChannel(seed=0, preset="kurakin-phone", halftone_cell=8, halftone_screen="clustered", printer_dpi=600)
    assert ch.describe()["config"]["halftone_screen"] == "clustered"


def test_print_photograph_uses_the_named_screen_and_records_it():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 32, 32, generator=g)
    common = dict(width_mm=30, frame_size=(480, 360), sample_printer=False, preset="kurakin-phone", printer_dpi=600)
    laser_cfg = PrintPhotoConfig(halftone_cell=8, halftone_screen="clustered", **common)
    laser = print_photograph(x, seed=3, keys=[0], config=laser_cfg)
    inkjet = print_photograph(x, seed=3, keys=[0], config=PrintPhotoConfig(halftone_cell=8, **common))
    assert laser.params[0]["printer"]["halftone_screen"] == "clustered"
    assert "halftone_screen" not in inkjet.params[0]["printer"]  # the default, left out of records
    assert not torch.equal(laser.images, inkjet.images)  # same draws, another screen
    # the record replays the photo bit for bit, through JSON
    record = json.loads(json.dumps(laser.params[0]))
    assert torch.equal(replay_print_photograph(x, record, laser_cfg), laser.images)


@pytest.mark.parametrize("name", ["kurakin_mobilenet_v2_phone_laser", "kurakin_efficientnet_lite0_phone_laser",
                                  "kurakin_efficientnet_lite0_phone", "kurakin_efficientnet_lite0_phone_rep5",
                                  "kurakin_efficientnet_lite2_phone", "kurakin_efficientnet_lite2_phone_laser",
                                  "kurakin_efficientnet_lite2_phone_laser_rep5", "kurakin_efficientnet_lite1_phone_laser",
                                  "kurakin_efficientnet_lite2_299_phone_laser_rep5",
                                  "kurakin_efficientnet_lite0_299_phone_laser_rep5",
                                  "kurakin_efficientnet_lite2_299_phone_laser_rep5_seed1",
                                  "kurakin_mobilenet_v2_299_phone_laser_rep5", "kurakin_efficientnet_lite2_299_phone"])
def test_the_laser_and_second_model_experiments_load_and_build_their_channel(name):
    """The committed experiment files parse (models known, keys valid) and name the printer documented."""
    from pathlib import Path

    import pipelines.kinds  # noqa: F401  (registers the kurakin kind)
    from dataclasses import asdict

    from pipelines.channels import make_channel
    from pipelines.experiment import load_config

    path = Path(__file__).resolve().parent.parent / "experiments" / f"{name}.yaml"
    cfg = load_config(path)
    ch = make_channel(asdict(cfg.channel), cfg.seed)
    laser = "_laser" in name
    assert ch.config.halftone_screen == ("clustered" if laser else "bayer")
    assert (ch.config.halftone_cell, ch.config.printer_dpi) == ((8, 600) if laser else (16, 1200))
    assert ch.preset == "kurakin-phone" and ch.config.width_mm == 90 and not ch.config.sample_printer
    if "_299_" in name:  # the paper's Inception v3 input size, the weights of a registry model (NAME@SIZE)
        from testbed.models.registry import get_entry

        assert [get_entry(m).input_size for m in cfg.models] == [(299, 299)]
