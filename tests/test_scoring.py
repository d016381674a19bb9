from __future__ import annotations

import pytest

from pipelines.scoring import Finding, score
from testbed.errors import ConfigError


def test_physical_sticker_is_av_physical():
    s = score(Finding("stop sign sticker -> speed limit", "physical", 0.93, 1000))
    assert s.cvss31_vector == "CVSS:3.1/AV:P/AC:L/PR:N/UI:N/S:U/C:N/I:H/A:N"
    assert s.cvss31_score == 4.6 and s.cvss31_severity == "Medium"
    assert s.cvss40_vector.startswith("CVSS:4.0/AV:P/AC:L")
    assert "AML.T0041" in s.atlas and "AML.T0015" in s.atlas


def test_surfaces_map_to_attack_vectors_and_privileges():
    host = score(Finding("frame tamperer on host", "host", 1.0, 500))
    net = score(Finding("frame tamperer on camera LAN", "adjacent-network", 1.0, 500, drops_frames=True))
    assert "/AV:L/" in host.cvss31_vector and "/PR:L/" in host.cvss31_vector
    assert "/AV:A/" in net.cvss31_vector and "/PR:N/" in net.cvss31_vector and net.cvss31_vector.endswith("A:L")
    assert net.cvss31_score > host.cvss31_score  # adjacent, no privileges, plus availability
    assert "AML.T0029" in net.atlas


def test_unreliable_attack_scores_lower():
    hi = score(Finding("patch", "physical", 0.9, 100))
    lo = score(Finding("patch", "physical", 0.2, 100))
    assert "AC:H" in lo.cvss31_vector and "I:L" in lo.cvss31_vector and lo.cvss31_score < hi.cvss31_score


def test_bad_findings_are_refused():
    with pytest.raises(ConfigError, match="surface"):
        Finding("x", "satellite", 0.5, 10)
    with pytest.raises(ConfigError, match="success_rate"):
        Finding("x", "physical", 1.5, 10)
    with pytest.raises(ConfigError, match="ATLAS"):
        Finding("x", "physical", 0.5, 10, atlas=("AML.T9999",))
