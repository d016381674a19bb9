"""A CVSS-style vulnerability score for each finding (CVSS v3.1 and v4.0 base vectors via the ``cvss`` package),
tagged with MITRE ATLAS technique ids.

The base metrics are derived from what the finding *is* (where the attacker must be, what they need) and from
what was *measured* (how reliably it works), with the reasoning recorded next to the vector:

- Attack vector: a printed sticker / patch / eyeglass frame needs physical presence (AV:P); a frame tamperer on
  the host running the model is local (AV:L); one on the camera's network segment is adjacent (AV:A).
- Attack complexity: low when the measured success rate over fresh transformations is >= 50%, else high.
- Privileges: none for physical artefacts and network tamperers; low (a local account) for a host tamperer.
- Impact: integrity of the model's decision (I:H when success >= 50%, I:L otherwise); availability when the
  finding drops frames (A:L); no confidentiality impact.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from cvss import CVSS3, CVSS4

from testbed.errors import ConfigError

Surface = Literal["physical", "host", "adjacent-network", "network"]

ATLAS = {
    "AML.T0043": "Craft Adversarial Data",
    "AML.T0043.000": "Craft Adversarial Data: White-Box Optimization",
    "AML.T0043.002": "Craft Adversarial Data: Black-Box Transfer",
    "AML.T0041": "Physical Environment Access",
    "AML.T0015": "Evade ML Model",
    "AML.T0044": "Full ML Model Access",
    "AML.T0005": "Create Proxy ML Model",
    "AML.T0029": "Denial of ML Service",
    "AML.T0031": "Erode ML Model Integrity",
}

_AV = {"physical": "P", "host": "L", "adjacent-network": "A", "network": "N"}


@dataclass(frozen=True)
class Finding:
    """One measured weakness: e.g. 'a 10%-area patch makes MobileNetV2 read toaster on 93% of photos'."""

    title: str
    surface: Surface
    success_rate: float  # measured, over held-out transformations / frames
    n: int  # sample size behind success_rate
    white_box: bool = True
    drops_frames: bool = False
    atlas: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.surface not in _AV:
            raise ConfigError(f"finding surface must be one of {sorted(_AV)}, got {self.surface!r}")
        if not 0.0 <= self.success_rate <= 1.0:
            raise ConfigError(f"success_rate must be in [0, 1], got {self.success_rate}")
        unknown = [t for t in self.atlas if t not in ATLAS]
        if unknown:
            raise ConfigError(f"unknown MITRE ATLAS technique ids {unknown}; known: {sorted(ATLAS)}")


@dataclass(frozen=True)
class Score:
    finding: Finding
    cvss31_vector: str
    cvss31_score: float
    cvss31_severity: str
    cvss40_vector: str
    cvss40_score: float
    cvss40_severity: str
    atlas: dict[str, str]
    rationale: str

    def as_dict(self) -> dict:
        d = asdict(self)
        d["finding"] = asdict(self.finding)
        return d


def default_atlas(f: Finding) -> tuple[str, ...]:
    ids = ["AML.T0043.000" if f.white_box else "AML.T0043.002", "AML.T0015"]
    if f.surface == "physical":
        ids.insert(0, "AML.T0041")
    else:
        ids.append("AML.T0031")
    if f.drops_frames:
        ids.append("AML.T0029")
    return tuple(ids)


def score(f: Finding) -> Score:
    """CVSS v3.1 and v4.0 base scores for a finding, with the reasoning."""
    av = _AV[f.surface]
    reliable = f.success_rate >= 0.5
    ac = "L" if reliable else "H"
    pr = "L" if f.surface == "host" else "N"
    integ = "H" if reliable else "L"
    avail = "L" if f.drops_frames else "N"
    v3 = CVSS3(f"CVSS:3.1/AV:{av}/AC:{ac}/PR:{pr}/UI:N/S:U/C:N/I:{integ}/A:{avail}")
    v4 = CVSS4(
        f"CVSS:4.0/AV:{av}/AC:{ac}/AT:N/PR:{pr}/UI:N/VC:N/VI:{integ}/VA:{avail}/SC:N/SI:N/SA:N"
    )
    atlas_ids = f.atlas or default_atlas(f)
    rationale = (
        f"AV:{av} ({f.surface}); AC:{ac} (measured success {100 * f.success_rate:.1f}% over n={f.n}, "
        f"threshold 50%); PR:{pr}; I:{integ}; A:{avail}"
    )
    return Score(
        finding=f,
        cvss31_vector=v3.clean_vector(),
        cvss31_score=float(v3.base_score),
        cvss31_severity=v3.severities()[0],
        cvss40_vector=v4.clean_vector(),
        cvss40_score=float(v4.base_score),
        cvss40_severity=v4.severity,
        atlas={t: ATLAS[t] for t in atlas_ids},
        rationale=rationale,
    )
