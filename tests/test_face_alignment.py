"""Face alignment (worlds.faces): dlib-style similarity chips from 5 landmarks, differentiable."""
from __future__ import annotations

import math

import pytest
import torch

from testbed.errors import ConfigError, ImageError
from worlds.faces import (
    AlignedFace,
    align_face,
    chip_template,
    chip_to_image_matrix,
    detect_and_align,
    image_to_chip_matrix,
    similarity_transform,
    transform_points,
)
from testbed.photos import load_photo


def _similarity(angle_deg: float, scale: float, tx: float, ty: float) -> torch.Tensor:
    a = math.radians(angle_deg)
    c, s = scale * math.cos(a), scale * math.sin(a)
    return torch.tensor([[[c, -s, tx], [s, c, ty]]])


def test_template_positions():
    t = chip_template(150, 0.25)
    assert t.shape == (5, 2)
    # Eyes level and symmetric about the chip's vertical axis (up to dlib's mean face asymmetry, < 1 px).
    assert abs(float(t[0, 1] - t[1, 1])) < 1e-4
    assert abs(float((t[0, 0] + t[1, 0]) / 2 - 75.0)) < 1.0
    assert 45 < float(t[0, 0]) < 50 and 100 < float(t[1, 0]) < 103
    assert float(t[0, 1]) < float(t[2, 1]) < float(t[3, 1])  # eyes above nose above mouth


def test_similarity_transform_recovers_a_known_transform():
    truth = _similarity(30.0, 2.5, 40.0, -12.0)
    src = chip_template()[None]
    dst = transform_points(truth, src)
    assert torch.allclose(similarity_transform(src, dst), truth, atol=1e-4)
    # chip→image matrix from landmarks that are exactly a transformed template is that transform
    assert torch.allclose(chip_to_image_matrix(dst), truth, atol=1e-4)
    back = transform_points(image_to_chip_matrix(dst), dst)
    assert torch.allclose(back, src, atol=1e-3)


def test_identity_alignment_reproduces_the_image(gen):
    img = torch.rand(1, 3, 150, 150, generator=gen)
    out = align_face(img, chip_template(), size=150, padding=0.25)
    assert out.shape == (1, 3, 150, 150)
    assert (out - img).abs().max() < 1e-4


def test_rotated_face_is_straightened(gen):
    """Landmarks placed by a 90° rotation give the chip of the image rotated back."""
    img = torch.rand(1, 3, 150, 150, generator=gen)
    rotated = torch.rot90(img, k=1, dims=(2, 3))  # counter-clockwise
    # Where the template points land in the rotated image: rot90 maps (x, y) -> (y, W - x).
    t = chip_template()
    lms = torch.stack([t[:, 1], 150 - t[:, 0]], dim=1)
    out = align_face(rotated, lms)
    assert (out - img).abs().max() < 1e-4


def test_astronaut_chip_and_gradient():
    img = load_photo("astronaut").requires_grad_(True)
    face = detect_and_align(img)
    assert isinstance(face, AlignedFace)
    crop = face.crop.detach()
    assert crop.shape == (1, 3, 150, 150) and 0 <= float(crop.min()) and float(crop.max()) <= 1
    assert face.prob > 0.99 and face.landmarks.shape == (5, 2) and face.box.shape == (4,)
    # The landmarks land near the template: a least-squares fit of 5 points, and the astronaut smiles (measured:
    # eyes 2.5 / 2.3 px, nose and mouth corners 6.5-6.7 px off in the 150 px chip).
    residual = (face.chip_landmarks() - chip_template()).norm(dim=1).detach()
    assert float(residual[:2].max()) < 4.0 and float(residual.max()) < 8.0, residual.tolist()
    # Differentiable w.r.t. the image; pixels far from the face get no gradient.
    face.crop.mean().backward()
    grad = img.grad[0].abs().sum(0)
    assert torch.isfinite(grad).all() and float(grad.sum()) > 0
    assert float(grad[400:, :].sum()) == 0.0 and float(grad[:, 400:].sum()) == 0.0


def test_batched_alignment_matches_single():
    img = load_photo("astronaut")
    lms = torch.tensor([[203.4, 101.2], [246.9, 103.4], [224.5, 129.2], [202.0, 139.7], [245.2, 141.8]])
    one = align_face(img, lms)
    two = align_face(torch.cat([img, img]), torch.stack([lms, lms]))
    assert two.shape == (2, 3, 150, 150)
    assert torch.allclose(two[1:], one, atol=1e-6)


def test_no_face_raises_image_error():
    with pytest.raises(ImageError, match="no face found"):
        detect_and_align(load_photo("brick"))


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"landmarks": torch.zeros(4, 2)}, ConfigError, "5 x 2"),
        ({"landmarks": torch.full((5, 2), float("nan"))}, ConfigError, "NaN"),
        ({"size": 3}, ConfigError, "chip size"),
        ({"padding": -1.0}, ConfigError, "padding"),
        ({"image": torch.rand(3, 64, 64)}, ImageError, "B x 3 x H x W"),
        ({"landmarks": torch.zeros(2, 5, 2)}, ConfigError, "1 image"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    args = {"image": torch.rand(1, 3, 64, 64), "landmarks": chip_template() / 3}
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        align_face(**args)
