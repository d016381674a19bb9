"""Real photographs that ship inside installed packages (scikit-image's wheel data, matplotlib's sample data).

Only files that are inside the wheels are used, never the ones scikit-image downloads at run time.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

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


#: the shipped photos, a data file (name, package, relative path, kind, ImageNet hint)
PHOTOS_PATH = Path(__file__).with_name("data") / "photos.json"


def _load_photo_table() -> tuple[Photo, ...]:
    from testbed.inputs import load_json

    doc = load_json(PHOTOS_PATH, what="shipped photo table")
    return tuple(Photo(**row) for row in doc["photos"])


PHOTOS: tuple[Photo, ...] = _load_photo_table()
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


#: characters that make a scene/image item a glob pattern
_GLOB_CHARS = "*?["


def image_asset_names() -> list[str]:
    """The pinned assets that are photos (``testbed.assets``: the ImageNet samples ``imagenet_val*``, the people
    photos ``faceapi_sample*`` / ``person_*``), usable by name wherever images are taken."""
    from testbed.assets import ASSETS
    from testbed.inputs import IMAGE_EXTENSIONS

    return [n for n, a in ASSETS.items() if Path(a.filename).suffix.lower() in IMAGE_EXTENSIONS]


def resolve_images(items: str | Sequence[str], *, what: str = "scene") -> list[str]:
    """The one resolver of the images a command takes (``--scenes``, ``classify IMAGES``, ``--image``, ...): each
    item is a shipped photo name (kept as the name), a pinned photo asset's name (its verified cached file;
    AssetError naming ``testbed assets fetch`` when absent), an image file, a folder (its images, by the one folder
    reader ``testbed.inputs.list_images``) or a glob (``'photos/*.jpg'``, ``**`` recursive; image files only, in
    natural order). A str is split on commas (``chelsea,coffee``); so is each item of a list that is not an
    existing path. Returns photo names and file paths in order; ImageError naming an item that is none of these."""
    from testbed.assets import asset_path
    from testbed.inputs import IMAGE_EXTENSIONS, list_images, natural_key

    parts: list[str] = []
    for item in [items] if isinstance(items, str) else list(items):
        item = str(item)
        parts.extend([item] if os.path.exists(item) else [p.strip() for p in item.split(",") if p.strip()])
    if not parts:
        raise ImageError(f"no {what}s given")
    out: list[str] = []
    for item in parts:
        path = Path(os.path.expanduser(item))
        if item in _BY_NAME:
            out.append(item)
        elif item in image_asset_names():
            out.append(str(asset_path(item)))
        elif path.is_dir():
            out.extend(str(q) for q in list_images(path, what=f"{what} folder {path}"))
        elif path.is_file():
            out.append(str(path))
        elif any(c in item for c in _GLOB_CHARS):
            found = sorted((q for q in glob.glob(os.path.expanduser(item), recursive=True)
                            if Path(q).suffix.lower() in IMAGE_EXTENSIONS and Path(q).is_file()), key=natural_key)
            if not found:
                raise ImageError(f"{what} glob {item!r} matches no image file ({' '.join(IMAGE_EXTENSIONS)})")
            out.extend(found)
        else:
            raise ImageError(f"{what} {item!r}: unknown photo name ({', '.join(list_photos())}; or a photo asset: "
                             f"{_asset_summary()}), and not an image file, a folder or a glob")
    return out


def _asset_summary() -> str:
    """The photo assets' names, each family once (``imagenet_val00 … imagenet_val19``)."""
    import re

    families: dict[str, list[str]] = {}
    for n in image_asset_names():
        families.setdefault(re.sub(r"\d+$", "", n), []).append(n)
    return ", ".join(v[0] if len(v) == 1 else f"{v[0]} … {v[-1]}" for v in families.values())


def load_images(items: Sequence[str], *, convert: bool = True) -> list[torch.Tensor]:
    """Each item of :func:`resolve_images` as a 1x3xHxW tensor in [0, 1] (``convert``: grayscale/RGBA/16-bit
    files converted to RGB instead of refused; shipped photos are always converted)."""
    return [load_photo(item) if item in _BY_NAME else load_image(item, convert=convert) for item in items]


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
