"""Real photographs that ship inside installed packages (scikit-image's wheel data, matplotlib's sample data).

Only files that are inside the wheels are used, never the ones scikit-image downloads at run time.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

from testbed.errors import ImageError
from testbed.imageio import load_image


@dataclass(frozen=True)
class Photo:
    name: str
    package: str  # "skimage" or "matplotlib"
    relative_path: str
    kind: str  # "photo" (colour scene), "grayscale-photo", or "texture" (grayscale material, no faces)
    imagenet_hint: str = ""  # what an ImageNet model should see, where obvious


PHOTOS: tuple[Photo, ...] = (
    Photo("astronaut", "skimage", "astronaut.png", "photo"),
    Photo("chelsea", "skimage", "chelsea.png", "photo", "tabby / Egyptian cat"),
    Photo("coffee", "skimage", "coffee.png", "photo", "espresso"),
    Photo("rocket", "skimage", "rocket.jpg", "photo"),
    Photo("motorcycle_left", "skimage", "motorcycle_left.png", "photo"),
    Photo("motorcycle_right", "skimage", "motorcycle_right.png", "photo"),
    Photo("hubble_deep_field", "skimage", "hubble_deep_field.jpg", "photo"),
    Photo("retina", "skimage", "retina.jpg", "photo"),
    Photo("ihc", "skimage", "ihc.png", "photo"),
    Photo("grace_hopper", "matplotlib", "sample_data/grace_hopper.jpg", "photo", "military uniform"),
    Photo("camera", "skimage", "camera.png", "grayscale-photo"),  # the cameraman: has a face
    Photo("coins", "skimage", "coins.png", "texture"),
    Photo("moon", "skimage", "moon.png", "texture"),
    Photo("page", "skimage", "page.png", "texture"),
    Photo("brick", "skimage", "brick.png", "texture"),
    Photo("grass", "skimage", "grass.png", "texture"),
    Photo("gravel", "skimage", "gravel.png", "texture"),
)
_BY_NAME = {p.name: p for p in PHOTOS}


def _package_root(package: str) -> Path:
    if package == "skimage":
        import skimage.data

        return Path(skimage.data.__file__).parent
    import matplotlib

    return Path(matplotlib.get_data_path())


def list_photos(kind: str | None = None) -> list[str]:
    """Names of the shipped photographs (``kind``: 'photo', 'texture' or None for all)."""
    return [p.name for p in PHOTOS if kind is None or p.kind == kind]


def photo_path(name: str) -> Path:
    try:
        photo = _BY_NAME[name]
    except KeyError:
        raise ImageError(f"unknown photo {name!r}; known photos: {', '.join(list_photos())}") from None
    path = _package_root(photo.package) / photo.relative_path
    if not path.is_file():
        raise ImageError(f"photo {name!r} should ship with {photo.package} at {path}, but the file is not there")
    return path


@lru_cache(maxsize=32)
def _load_cached(name: str) -> torch.Tensor:
    return load_image(photo_path(name), convert=True)  # textures are grayscale: converted explicitly


def load_photo(name: str, size: int | tuple[int, int] | None = None) -> torch.Tensor:
    """A shipped photo as a 1x3xHxW float tensor in [0, 1]; optionally resized (short side, or (H, W))."""
    x = _load_cached(name).clone()
    return x if size is None else resize(x, size)


def resize(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Resize a BCHW tensor to ``(H, W)``, or so that its short side is ``size`` (antialiased bilinear)."""
    if isinstance(size, int):
        h, w = x.shape[-2:]
        scale = size / min(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Central ``size`` x ``size`` crop of a BCHW tensor."""
    h, w = x.shape[-2:]
    if h < size or w < size:
        raise ImageError(f"cannot crop {size}x{size} from an image of {h}x{w}")
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def imagenet_preprocess(x: torch.Tensor, size: int = 224) -> torch.Tensor:
    """Resize the short side to 256/224 * ``size`` and centre-crop, as ImageNet models are evaluated."""
    return center_crop(resize(x, round(size * 256 / 224)), size)


def imagenet_view(name: str, size: int = 224) -> torch.Tensor:
    """A shipped photo as an ImageNet model sees it (see ``imagenet_preprocess``)."""
    return imagenet_preprocess(load_photo(name), size)
