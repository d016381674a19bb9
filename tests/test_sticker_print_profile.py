"""The sticker-over-artwork recipe's EOT (docs/signs.md, "Over artwork variation"): rp2 viewpoints with the sticker
colours through the printer profile measured from simulated chart photos (experiments/eot_rp2_printer_profile.yaml, experiments/printer_profile_default.json)."""
from __future__ import annotations

import numpy as np
import torch

from camera.simulated import PrinterParams, SimulatedPrinter
from physical.eot import EOTConfig, EOTTransform, preset
from physical.printer_profile import delta_e2000_rgb, load_profile

EOT_FILE = "experiments/eot_rp2_printer_profile.yaml"
PROFILE = "experiments/printer_profile_default.json"


def test_recipe_eot_is_rp2_with_the_profile_on_the_printed_sticker_only():
    cfg = EOTConfig.load(EOT_FILE)
    assert cfg.printer_profile == PROFILE and cfg.printer_profile_jitter == 0.03
    rest = {k: v for k, v in cfg.to_dict().items() if k not in ("stages", "printer_profile", "printer_profile_jitter")}
    assert rest == preset("rp2").to_dict()
    t = EOTTransform(cfg)
    assert [s.name for s in t.stages][:2] == ["profile", "print"]
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    p = t.sample(4, torch.Generator().manual_seed(1))
    # the sign is never "printed": with print_stage=False the profile leaves the picture to the camera stages
    assert torch.equal(t.apply(x, p, print_stage=False), EOTTransform(preset("rp2")).apply(x, p, print_stage=False))
    assert not torch.allclose(t.apply_print(x, p), x, atol=0.02)


def test_committed_profile_models_the_default_simulated_printer():
    """Fitted from 4 simulated photos of the chart printed by ``PrinterParams()``: it predicts fresh colours (not
    the chart's) as that printer prints them within a mean CIEDE2000 of 3, where the intended colours are far off."""
    prof = load_profile(PROFILE)
    assert prof.to_dict()["fit"]["held_out_de2000"]["mean"] <= 1.0
    rgb = np.random.default_rng(11).uniform(0, 1, (300, 3)).astype(np.float32)
    truth = SimulatedPrinter(PrinterParams()).expected_colors(rgb)
    pred = prof.colours(torch.from_numpy(rgb)).numpy()
    assert float(delta_e2000_rgb(pred, truth).mean()) <= 3.0
    assert float(delta_e2000_rgb(rgb, truth).mean()) >= 4.0
