"""Face alignment: 5 MTCNN landmarks → dlib-style 150x150 face chips, differentiable in the image.

The dlib ResNet face descriptor expects the chips that dlib's ``get_face_chip_details(shape, 150, 0.25)`` +
``extract_image_chip`` produce: a similarity transform (rotation, uniform scale, translation) fitted by least
squares from a canonical "mean face" to the detected landmarks, sampled with bilinear interpolation.

Template. dlib fits the chip from its *mean face* (``dlib/image_transforms/interpolation.h``: the 68-point
``mean_face_shape_x/y`` arrays, points 17..67 in a unit square; its 5-point model uses eye corners and the nose
base taken from the same mean face). MTCNN's 5 points are different points (eye centres, nose tip, mouth
corners), so we take their positions from that same 68-point mean face:

===============  ==========================================  =====================
MTCNN landmark   dlib 68-point mean face                     template (x, y)
===============  ==========================================  =====================
left eye         mean of points 36-41 (eye contour)          (0.225492, 0.215990)
right eye        mean of points 42-47                        (0.754761, 0.215990)
nose (tip)       point 30                                    (0.490127, 0.515625)
mouth left       point 48                                    (0.254149, 0.780233)
mouth right      point 54                                    (0.726104, 0.780233)
===============  ==========================================  =====================

As in dlib, a template point ``p`` lands at chip pixel ``(padding + p) / (1 + 2 padding) * size`` (dlib's pixel
index convention), the transform chip → image is the least-squares similarity over the 5 pairs, and the chip is
sampled bilinearly, black outside the image. Where the chip is a strong downsampling (> 1.5 image pixels per
chip pixel) the image is first resized with antialiasing, in the spirit of dlib's pyramid downsampling.

Everything is torch (``affine_grid``-style grid + ``grid_sample``), so gradients flow from the chip back to the
image pixels (and to the landmarks) — the eyeglass attack backpropagates through ``align_face``.
Coordinates: continuous pixels, the image's top-left corner at (0, 0), pixel (i, j) centred at (j+0.5, i+0.5),
the same convention as ``testbed.models.mtcnn``.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from testbed.errors import ConfigError, ImageError

#: The 5-point canonical face in dlib's unit square, rows in MTCNN landmark order (see module docstring).
CANONICAL_TEMPLATE: tuple[tuple[float, float], ...] = (
    (0.225492, 0.215990),  # left eye   (dlib 36-41)
    (0.754761, 0.215990),  # right eye  (dlib 42-47)
    (0.490127, 0.515625),  # nose tip   (dlib 30)
    (0.254149, 0.780233),  # mouth left (dlib 48)
    (0.726104, 0.780233),  # mouth right (dlib 54)
)
DEFAULT_SIZE = 150
DEFAULT_PADDING = 0.25


def chip_template(size: int = DEFAULT_SIZE, padding: float = DEFAULT_PADDING) -> torch.Tensor:
    """Where the 5 landmarks land in the chip (5 x 2, continuous pixel coordinates)."""
    _check_chip(size, padding)
    t = torch.tensor(CANONICAL_TEMPLATE, dtype=torch.float64)
    return ((padding + t) / (1 + 2 * padding) * size + 0.5).float()  # dlib pixel index → continuous


def similarity_transform(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Least-squares similarity (B x 2 x 3) mapping ``src`` points to ``dst`` points (both B x N x 2).

    Closed form of the linear problem in (a, b, tx, ty) with ``x' = a x - b y + tx``, ``y' = b x + a y + ty``
    (the same optimum as Umeyama's method / dlib's ``find_similarity_transform``). Differentiable.
    """
    if src.shape != dst.shape or src.ndim != 3 or src.shape[-1] != 2 or src.shape[1] < 2:
        raise ConfigError(
            "similarity_transform needs two B x N x 2 point sets (N >= 2), "
            f"got {tuple(src.shape)} and {tuple(dst.shape)}"
        )
    sm, dm = src.mean(dim=1, keepdim=True), dst.mean(dim=1, keepdim=True)
    s, d = src - sm, dst - dm
    norm = (s**2).sum(dim=(1, 2)).clamp(min=1e-12)
    a = (s * d).sum(dim=(1, 2)) / norm
    b = (s[..., 0] * d[..., 1] - s[..., 1] * d[..., 0]).sum(dim=1) / norm
    rot = torch.stack([torch.stack([a, -b], -1), torch.stack([b, a], -1)], dim=1)  # B x 2 x 2
    t = dm.squeeze(1) - (rot @ sm.transpose(1, 2)).squeeze(2)
    return torch.cat([rot, t[..., None]], dim=2)


def invert_affine(m: torch.Tensor) -> torch.Tensor:
    """Inverse of B x 2 x 3 affine matrices."""
    lin = torch.linalg.inv(m[:, :, :2])
    return torch.cat([lin, -(lin @ m[:, :, 2:])], dim=2)


def chip_to_image_matrix(
    landmarks: torch.Tensor, size: int = DEFAULT_SIZE, padding: float = DEFAULT_PADDING
) -> torch.Tensor:
    """B x 2 x 3 similarity mapping chip coordinates to image coordinates for landmarks B x 5 x 2."""
    lms = _check_landmarks(landmarks)
    template = chip_template(size, padding).to(lms).expand_as(lms)
    return similarity_transform(template, lms)


def image_to_chip_matrix(
    landmarks: torch.Tensor, size: int = DEFAULT_SIZE, padding: float = DEFAULT_PADDING
) -> torch.Tensor:
    """B x 2 x 3 similarity mapping image coordinates into the chip (e.g. to place an eyeglass mask)."""
    return invert_affine(chip_to_image_matrix(landmarks, size, padding))


def transform_points(m: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Apply B x 2 x 3 affine matrices to B x N x 2 points."""
    return points @ m[:, :, :2].transpose(1, 2) + m[:, None, :, 2]


def align_face(
    image: torch.Tensor,
    landmarks: torch.Tensor,
    size: int = DEFAULT_SIZE,
    padding: float = DEFAULT_PADDING,
    antialias: bool = True,
) -> torch.Tensor:
    """Aligned face chips B x 3 x size x size from images B x 3 x H x W in [0, 1] and landmarks B x 5 x 2.

    A single image (1 x 3 x H x W) may come with landmarks 5 x 2. Differentiable w.r.t. ``image``.
    """
    image = _check_image(image)
    lms = _check_landmarks(landmarks).to(device=image.device, dtype=image.dtype)
    if lms.shape[0] != image.shape[0]:
        raise ConfigError(f"align_face got {image.shape[0]} image(s) but landmarks for {lms.shape[0]} face(s)")
    m = chip_to_image_matrix(lms, size, padding)
    height, width = image.shape[-2:]
    # Chip pixel centres → image coordinates → grid_sample's normalised coordinates (align_corners=False).
    c = torch.arange(size, device=image.device, dtype=image.dtype) + 0.5
    gy, gx = torch.meshgrid(c, c, indexing="ij")
    pts = torch.stack([gx, gy], dim=-1).view(1, -1, 2).expand(len(m), -1, -1)
    src = transform_points(m, pts)
    grid = torch.stack([2 * src[..., 0] / width - 1, 2 * src[..., 1] / height - 1], dim=-1).view(-1, size, size, 2)
    scales = m[:, :, 0].norm(dim=1).detach()  # image pixels per chip pixel
    chips = []
    for i in range(len(m)):
        src_img = image[i : i + 1]
        f = float(scales[i])
        if antialias and f > 1.5:  # downsample first; normalised grid coordinates are unchanged by resizing
            new = (max(1, round(height / f)), max(1, round(width / f)))
            src_img = F.interpolate(src_img, size=new, mode="bilinear", antialias=True, align_corners=False)
        chips.append(
            F.grid_sample(src_img, grid[i : i + 1], mode="bilinear", padding_mode="zeros", align_corners=False)
        )
    return torch.cat(chips).clamp(0, 1)


# ----------------------------------------------------------------------------------------------------------------
# Detection + alignment
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class AlignedFace:
    """An aligned face chip with where it came from.

    crop: 1 x 3 x size x size (differentiable w.r.t. the input image); landmarks: 5 x 2 and box: 4 (x1 y1 x2 y2)
    in image pixels; prob: detector probability; matrix: 2 x 3 chip → image similarity.
    """

    crop: torch.Tensor
    landmarks: torch.Tensor
    box: torch.Tensor
    prob: float
    matrix: torch.Tensor

    def chip_landmarks(self) -> torch.Tensor:
        """The landmarks in chip coordinates (5 x 2)."""
        return transform_points(invert_affine(self.matrix[None]), self.landmarks[None])[0]


@lru_cache(maxsize=4)
def _default_detector(device: str):
    from testbed.models.mtcnn import MTCNN

    return MTCNN().to(device)


def detect_and_align(
    image: torch.Tensor,
    detector=None,
    size: int = DEFAULT_SIZE,
    padding: float = DEFAULT_PADDING,
    min_prob: float = 0.9,
) -> AlignedFace:
    """Detect the most probable face in one image (1 x 3 x H x W in [0, 1]) and align it.

    Detection runs without gradients; the crop is differentiable w.r.t. ``image``. Raises ImageError if no face
    reaches ``min_prob``.
    """
    image = _check_image(image)
    if image.shape[0] != 1:
        raise ImageError(f"detect_and_align takes one image (1 x 3 x H x W), got a batch of {image.shape[0]}")
    if not 0.0 <= min_prob < 1.0:
        raise ConfigError(f"min_prob must be in [0, 1), got {min_prob}")
    detector = detector if detector is not None else _default_detector(str(image.device))
    dets = detector.detect(image.detach())[0]
    if len(dets) == 0 or float(dets.probs[0]) < min_prob:
        best = f"best probability {float(dets.probs[0]):.3f}" if len(dets) else "no candidate at all"
        raise ImageError(
            f"no face found with probability >= {min_prob} ({best}) in image of shape {tuple(image.shape)}"
        )
    lms = dets.landmarks[0].to(image)
    crop = align_face(image, lms[None], size, padding)
    matrix = chip_to_image_matrix(lms[None], size, padding)[0]
    return AlignedFace(crop, lms, dets.boxes[0].to(image), float(dets.probs[0]), matrix)


# ----------------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------------


def _check_chip(size: int, padding: float) -> None:
    if not isinstance(size, int) or size < 8:
        raise ConfigError(f"chip size must be an int >= 8 pixels, got {size!r}")
    if not -0.4 <= padding <= 5.0:
        raise ConfigError(f"chip padding must be in [-0.4, 5] (fraction of the face size), got {padding}")


def _check_image(image: torch.Tensor) -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[1] != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ImageError(f"expected a B x 3 x H x W RGB float tensor in [0, 1], got {shape}")
    if not image.is_floating_point():
        raise ImageError(f"expected float pixels in [0, 1], got dtype {image.dtype}")
    return image


def _check_landmarks(landmarks: torch.Tensor) -> torch.Tensor:
    if not isinstance(landmarks, torch.Tensor):
        landmarks = torch.as_tensor(landmarks, dtype=torch.float32)
    if landmarks.ndim == 2:
        landmarks = landmarks[None]
    if landmarks.ndim != 3 or tuple(landmarks.shape[1:]) != (5, 2):
        raise ConfigError(f"landmarks must be 5 x 2 or B x 5 x 2 (x, y) points, got shape {tuple(landmarks.shape)}")
    if not torch.isfinite(landmarks).all():
        raise ConfigError("landmarks contain NaN or infinite values")
    return landmarks if landmarks.is_floating_point() else landmarks.float()
