"""Shared test fixtures."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def mobilenet():
    from testbed.models.registry import get_model

    return get_model("mobilenet_v2", device="cpu")


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)
