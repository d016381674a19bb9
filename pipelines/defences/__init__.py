"""Defences for the sign classifier, and their adaptive evaluation (issue 8).

* :mod:`.training`     — FGSM / PGD adversarial training, TRADES, DOA (rectangular-occlusion AT), Gaussian-noise
  training (smoothing base), MC-dropout fine-tuning, distillation teacher/student, extra clean ensemble members;
* :mod:`.distillation` — the distilled model and its temperature;
* :mod:`.ensemble`     — averaging ensembles;
* :mod:`.transforms`   — JPEG, bit depth, median filter, random resize-and-pad, as model wrappers with BPDA / EOT;
* :mod:`.smoothing`    — randomized smoothing (Cohen et al. 2019): predict and certify;
* :mod:`.detectors`    — feature squeezing (Xu et al. 2018), MC-dropout uncertainty (Feinman et al. 2017);
* :mod:`.adaptive`     — attacks for each defence (BPDA, EOT-PGD, margin PGD, detector-aware PGD), masking checks;
* :mod:`.evaluate`     — the recipe that writes ``docs/reports/defences_sign/``;
* :mod:`.cli`          — ``add_parser(subparsers)``: the ``testbed defences`` subcommand.
"""
from __future__ import annotations

from testbed.errors import TestbedError


class DefenceError(TestbedError):
    """A defence was misconfigured or used wrongly (the message names the value and what was expected)."""
