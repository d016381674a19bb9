"""Where a stop -> no_entry artwork sticker loses success through the printer (docs/signs.md, "With the retrained
sign-cnn"): on 64 validation drawings (train split, seed 99: not a run's optimisation, evaluation or survival
drawings), each printed by a printer drawn with ``PrinterParams.sample`` (colours only, no camera), the success of
the sticker digitally, with the whole stickered sign printed, only the sticker printed, and only the sign printed.

    .venv/bin/python docs/reports/sticker_artwork/printer_diagnostic.py RUN [RUN ...]
"""
import sys, numpy as np, torch, torch.nn.functional as F
from physical.universal import SignSticker, sign_artwork_pool
from camera.simulated import SimulatedPrinter, PrinterParams
from testbed.models.registry import get_model
torch.set_num_threads(1)
model = get_model("sign-cnn", device="cpu")
n = 64
clean, _ = sign_artwork_pool("stop", 128, n, split="train", seed=99, background=0.5)
def cls(x):
    with torch.no_grad():
        return model(F.interpolate(x, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)).argmax(1)
def printed(batch, seed=5):
    rng = np.random.default_rng(seed); outs = []
    for i in range(batch.shape[0]):
        pr = SimulatedPrinter(PrinterParams.sample(rng))
        y = pr.expected_colors(batch[i].permute(1, 2, 0).reshape(-1, 3).numpy()).reshape(*batch.shape[-2:], 3)
        outs.append(torch.from_numpy(np.ascontiguousarray(y)).permute(2, 0, 1))
    return torch.stack(outs).float().clamp(0, 1)
pclean = printed(clean)
for run in sys.argv[1:]:
    mask, col = torch.load(f"{run}/mask.pt", weights_only=True), torch.load(f"{run}/colours.pt", weights_only=True)
    adv = SignSticker.stickered(clean, mask, col)
    padv = printed(adv)
    r = {"digital": cls(adv), "both printed": cls(padv),
         "sticker printed only": cls(clean * (1 - mask) + mask * padv),
         "sign printed only": cls(pclean * (1 - mask) + mask * adv)}
    print(run, {k: round((v == 15).float().mean().item(), 3) for k, v in r.items()})
