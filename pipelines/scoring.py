"""Scoring: photos of a printed attack (``score_photos``, the ``testbed score`` command) and a CVSS-style
vulnerability score for each finding.

``score_photos(PHOTOS, model, target=T[, untargeted=True])`` classifies each whole photo as the model sees a photo
(resize the short side to 256/224 x the input, centre crop) - the printed patch lying in its scene, photographed,
never rectified or pasted - and counts success (targeted: top-1 = T; untargeted: top-1 != T, the object's true
class) as k/n with a Wilson 95% interval. A photo that cannot be read is listed as skipped with its reason.

CVSS: (CVSS v3.1 and v4.0 base vectors via the ``cvss`` package),
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

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

from cvss import CVSS3, CVSS4

from testbed.errors import ConfigError, ImageError
from testbed.stats import Rate, rate

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


# ------------------------------------------------------------------------------------------------ photos
@dataclass
class PhotoScores:
    """``testbed score``: success over the readable photos (``rate``: k/n, Wilson 95%), one record per photo
    (file, top-5 names and probabilities, success) and the photos skipped with their reason."""

    model: str
    target: int
    target_name: str
    untargeted: bool
    rate: Rate
    per_photo: list[dict[str, Any]]
    skipped: list[tuple[str, str]]

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "target": self.target, "target_name": self.target_name,
                "untargeted": self.untargeted,
                "success": "top-1 != target" if self.untargeted else "top-1 == target",
                "rate": self.rate.as_dict(), "photos": self.per_photo,
                "skipped": [{"file": f, "reason": r} for f, r in self.skipped]}


def photo_files(photos: str | Path | Sequence[str | Path]) -> list[Path]:
    """A folder's images (the one folder reader, natural order), or the files given (every one kept, in order)."""
    from testbed.inputs import list_images

    if isinstance(photos, (str, Path)):
        return list_images(photos, what=f"photo folder {photos}")
    return [Path(p) for p in photos]


def score_photos(photos: str | Path | Sequence[str | Path], model_name: str, *, target: int,
                 untargeted: bool = False, batch_size: int = 16) -> PhotoScores:
    """Classify every photo whole (as the model sees a photo) and count successes; see the module docstring."""
    import torch

    from testbed.imageio import load_image
    from testbed.models.registry import get_entry, get_model
    from testbed.photos import imagenet_preprocess, resize

    entry = get_entry(model_name)
    labels = [str(n) for n in entry.labels] if entry.labels else []
    if isinstance(target, bool) or not isinstance(target, int) or (labels and not 0 <= target < len(labels)):
        raise ConfigError(f"target {target!r} is not a class index of {model_name}")
    files = photo_files(photos)
    model = get_model(model_name)
    dev = next(model.parameters()).device
    h, w = (int(v) for v in entry.input_size)
    views, names, skipped = [], [], []
    for f in files:
        try:
            x = load_image(f, what="photo")
        except ImageError as exc:  # unreadable, grayscale, RGBA, 16-bit, too large, ...: named, not dropped
            skipped.append((str(f), str(exc)))
            continue
        views.append(imagenet_preprocess(x, h) if h == w else resize(x, (h, w)))
        names.append(str(f))
    per_photo, ok = [], []
    with torch.no_grad():
        for i in range(0, len(views), batch_size):
            prob = model(torch.cat(views[i:i + batch_size]).to(dev)).softmax(1).cpu()
            p5, i5 = prob.topk(min(5, prob.shape[1]), dim=1)
            for j in range(prob.shape[0]):
                top1 = int(i5[j, 0])
                success = top1 != target if untargeted else top1 == target
                ok.append(success)
                per_photo.append({"file": names[i + j], "success": bool(success), "top1": top1,
                                  "top1_name": labels[top1] if labels else str(top1),
                                  "target_probability": round(float(prob[j, target]), 6),
                                  "top5": [{"class": int(c), "name": labels[int(c)] if labels else str(int(c)),
                                            "probability": round(float(v), 6)} for v, c in zip(p5[j], i5[j])]})
    return PhotoScores(model_name, target, labels[target] if labels else str(target), untargeted, rate(ok),
                       per_photo, skipped)


def write_photo_scores(res: PhotoScores, out: str | Path, views_of: Sequence[str] | None = None) -> dict[str, Path]:
    """``scores.json`` (per photo) and ``contact_sheet.png`` (each photo as the model saw it, a green frame when
    the attack succeeded, red when not, with its top-1 and the target's probability) into ``out``."""
    import io

    from PIL import Image, ImageDraw

    from testbed.imageio import load_image, tensor_to_uint8
    from testbed.photos import imagenet_preprocess
    from testbed.runs import write_atomic

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "scores.json", json.dumps(res.as_dict(), indent=2) + "\n")
    n = len(res.per_photo)
    tile, cap, cols = 160, 34, max(1, min(6, n))
    sheet = Image.new("RGB", (cols * (tile + 8) + 8, max(1, -(-n // cols)) * (tile + cap + 8) + 8), "white")
    draw = ImageDraw.Draw(sheet)
    for k, rec in enumerate(res.per_photo):
        img = Image.fromarray(tensor_to_uint8(imagenet_preprocess(load_image(rec["file"], what="photo"), tile)))
        x, y = 8 + (k % cols) * (tile + 8), 8 + (k // cols) * (tile + cap + 8)
        colour = (0, 160, 0) if rec["success"] else (200, 0, 0)
        draw.rectangle([x - 3, y - 3, x + tile + 2, y + tile + 2], outline=colour, width=3)
        sheet.paste(img, (x, y))
        draw.text((x, y + tile + 3), f"{Path(rec['file']).name[:26]}", fill=(0, 0, 0))
        draw.text((x, y + tile + 17), f"{rec['top1_name'][:18]} p(t)={rec['target_probability']:.2f}", fill=colour)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    write_atomic(out / "contact_sheet.png", buf.getvalue())
    return {"scores": out / "scores.json", "contact_sheet": out / "contact_sheet.png"}
