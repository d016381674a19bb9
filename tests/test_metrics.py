"""Metric definitions checked on hand-made cases."""
from __future__ import annotations

import math

import pytest
import torch

from pipelines.metrics import destruction_rate, prefilter, rate, topk_correct, wilson_interval


def test_wilson_interval_known_values():
    # Reference values (Wilson 1927 / standard tables): 8 of 10 -> [0.4902, 0.9433]; 0 of 10 -> [0, 0.2775]
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.7225, abs=1e-4)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_rate_carries_its_sample_size():
    r = rate([True, False, True, True])
    assert (r.k, r.n, r.value) == (3, 4, 0.75) and "n=4" in str(r)


def test_destruction_rate_hand_made():
    # image:          0      1      2      3      4      5
    clean_ok = [True, True, True, True, False, True]
    adv_ok = [False, False, False, True, False, False]
    photo_ok = [True, False, True, True, True, False]
    # eligible: clean correct and adversarial wrong -> images 0, 1, 2, 5; photo correct among them: 0, 2
    r = destruction_rate(clean_ok, adv_ok, photo_ok)
    assert (r.k, r.n) == (2, 4) and r.value == 0.5


def test_prefiltered_case():
    clean_ok = torch.tensor([True, True, True, False])
    adv_ok = torch.tensor([False, False, True, False])
    conf = torch.tensor([0.95, 0.5, 0.99, 0.99])
    assert prefilter(clean_ok, adv_ok, conf).tolist() == [True, False, False, False]
    keep = prefilter(clean_ok, adv_ok, conf)
    r = destruction_rate(clean_ok[keep], adv_ok[keep], torch.tensor([True, True, True, True])[keep])
    assert (r.k, r.n) == (1, 1)


def test_topk_correct():
    logits = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.04, 0.06]])
    labels = torch.tensor([2, 1])
    assert topk_correct(logits, labels, 1).tolist() == [False, False]
    assert topk_correct(logits, labels, 2).tolist() == [True, False]
    assert topk_correct(logits, labels, 5).tolist() == [True, True]
