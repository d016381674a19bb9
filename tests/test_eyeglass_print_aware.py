"""The eyeglass frame's print-aware EOT preset (issue 16): sharif's head movements, the print-photo channel's
colour and blur ranges, one row of the preset table, the experiment file naming it."""
from __future__ import annotations

import torch

from physical.eot import EOTConfig, EOTTransform, preset


def test_sharif_print_aware_keeps_sharif_geometry_and_adds_the_channel():
    sharif, pa = preset("sharif"), preset("sharif-print-aware")
    geometry = ("rotation", "scale", "translate", "perspective", "padding")
    assert {k: getattr(pa, k) for k in geometry} == {k: getattr(sharif, k) for k in geometry}
    # the survival channel's fixed exposure and black point, chroma loss, white balance, blur and noise
    assert pa.contrast == (0.55, 1.0) and pa.brightness == 0.1 and pa.saturation == (0.6, 1.0)
    assert pa.illuminant == 0.08 and pa.printer_gain == 0.08 and pa.printer_offset == 0.04
    assert pa.blur_kind == "disk" and pa.blur == (0.0, 4.0) and pa.motion == (0.0, 8.0) and pa.noise == (0.0, 0.02)
    assert EOTConfig.load("experiments/eot_print_aware_eyeglass.yaml") == pa


def test_sharif_print_aware_blurs_a_thin_frame_rim_that_sharif_keeps():
    """A 6-px bright rim (the frame's thickness in the chip) on a dark chip: sharif's draws keep its contrast,
    the print-aware draws spread it (disc + motion blur), on the same seeded draws, and replay bit for bit."""
    x = torch.full((1, 3, 150, 150), 0.2)
    x[:, :, 40:46, 20:130] = 0.9
    peaks = {}
    for name in ("sharif", "sharif-print-aware"):
        t = EOTTransform(name)
        p = t.sample(32, torch.Generator().manual_seed(0))
        y = t.apply(x.expand(32, -1, -1, -1), p)
        assert torch.equal(y, t.apply(x.expand(32, -1, -1, -1), t.sample(32, torch.Generator().manual_seed(0))))
        peaks[name] = (y.amax(dim=(1, 2, 3)) - y.mean(dim=(1, 2, 3))).mean().item()
    assert peaks["sharif"] > 0.6  # sharif's brightness/contrast only: the rim stays near full contrast
    assert peaks["sharif-print-aware"] < 0.8 * peaks["sharif"]
