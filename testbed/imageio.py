"""Image files -> BCHW RGB float tensors in [0, 1] with clear errors, and tensors -> lossless PNG bytes (files are
written by ``testbed.runs.save_image``, atomically)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from testbed.errors import ImageError
from testbed.inputs import decode_checked, open_image_checked


def _describe_mode(img: Image.Image) -> str:
    return {"L": "grayscale", "LA": "grayscale with alpha", "RGBA": "RGBA", "I;16": "16-bit grayscale",
            "I;16B": "16-bit grayscale", "I": "32-bit integer", "F": "32-bit float", "P": "palette",
            "1": "1-bit", "CMYK": "CMYK"}.get(img.mode, img.mode)


def pil_to_tensor(img: Image.Image, *, convert: bool = False, source: str = "image") -> torch.Tensor:
    """A PIL image as a 1x3xHxW float32 tensor in [0, 1].

    Only 8-bit RGB is accepted as is. Other modes (grayscale, RGBA, 16-bit, palette, CMYK) are refused
    with an error naming the mode, unless ``convert=True``: then they are converted explicitly
    (alpha is dropped by compositing on white, 16-bit is scaled by 1/65535, grayscale is replicated).
    """
    if img.mode != "RGB":
        if not convert:
            raise ImageError(
                f"{source}: {_describe_mode(img)} image (PIL mode {img.mode}); expected 8-bit RGB. "
                "Convert it, or pass convert=True (CLI: --convert-images) to convert explicitly"
            )
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img, dtype=np.float32) / 65535.0
            arr = np.clip(arr, 0.0, 1.0)
            t = torch.from_numpy(np.ascontiguousarray(arr))[None, None].expand(1, 3, -1, -1).contiguous()
            return t
        if img.mode in ("RGBA", "LA", "P"):
            rgba = img.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(white, rgba)
        img = img.convert("RGB")
    arr = np.array(img, dtype=np.uint8)  # one writable copy (asarray + copy made two)
    return torch.from_numpy(arr).permute(2, 0, 1)[None].float().div_(255.0)


def load_image(path: str | Path, *, convert: bool = False, what: str = "image file") -> torch.Tensor:
    """Read an image file as a 1x3xHxW float32 RGB tensor in [0, 1] (see ``pil_to_tensor`` for modes).

    Goes through the input boundary (``testbed.inputs.open_image_checked``): missing, folder, special, empty
    or oversized files and images declaring more than ``max_image_pixels()`` pixels are refused with an
    ImageError before anything is decoded.
    """
    p = Path(path)
    with open_image_checked(p, what=what) as img:
        decode_checked(img, what=what, source=str(p))
        return pil_to_tensor(img, convert=convert, source=str(p))


def check_images(x: torch.Tensor, *, name: str = "images") -> torch.Tensor:
    """Validate the project's image convention: BCHW, 3 channels, floating point, values in [0, 1]."""
    if not isinstance(x, torch.Tensor):
        raise ImageError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ImageError(f"{name} must be BCHW RGB with 3 channels, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ImageError(f"{name} must be float in [0, 1], got dtype {x.dtype}")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise ImageError(f"{name} must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]")
    return x


def tensor_to_uint8(x: torch.Tensor) -> np.ndarray:
    """A 1x3xHxW (or 3xHxW) tensor in [0, 1] as an HxWx3 uint8 RGB array (rounded)."""
    if x.ndim == 4:
        if x.shape[0] != 1:
            raise ImageError(f"expected a single image, got a batch of {x.shape[0]}")
        x = x[0]
    return (x.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy())


def encode_png(x: torch.Tensor, *, bits: int = 8, name: str = "image") -> bytes:
    """A 1x3xHxW (or 3xHxW) tensor in [0, 1] as lossless PNG bytes, 8- or 16-bit per channel. Writing a file is
    ``testbed.runs.save_image`` (atomic, through ``write_atomic``); ``name`` only words the error."""
    if bits == 8:
        buf = io.BytesIO()
        Image.fromarray(tensor_to_uint8(x), mode="RGB").save(buf, format="PNG")
        return buf.getvalue()
    if bits == 16:
        # PIL cannot write 16-bit RGB; use OpenCV's encoder via numpy (RGB -> BGR handled here).
        import cv2

        arr = x.detach().float().clamp(0, 1)
        arr = arr[0] if arr.ndim == 4 else arr
        arr16 = (arr.mul(65535).round().to(torch.int32).permute(1, 2, 0).cpu().numpy()).astype(np.uint16)
        ok, encoded = cv2.imencode(".png", arr16[:, :, ::-1])
        if not ok:
            raise ImageError(f"could not encode {name} as 16-bit PNG")
        return encoded.tobytes()
    raise ImageError(f"bits must be 8 or 16, got {bits}")


#: Qualities the JPEG round trip accepts (libjpeg's whole range; 100 still quantises, with all-ones tables).
JPEG_QUALITY_RANGE = (1, 100)


def jpeg_round_trip(rgb: np.ndarray, quality: int) -> np.ndarray:
    """An HxWx3 uint8 RGB array encoded as baseline JPEG at ``quality`` (4:2:0 chroma) and decoded again.

    The project's one non-differentiable JPEG (libjpeg-turbo through OpenCV): the JPEG defence
    (``pipelines.defences.transforms.JPEG``, also the secure path's JPEG prediction path) and the simulated camera's
    sensor JPEG call it. Pillow's encoder writes the same bytes (a test checks it); OpenCV is used because its
    round trip is about 2x faster on a 1080p frame. The attacks optimise through a different, differentiable JPEG
    (kornia's, in ``physical.eot_stages``): an optimiser needs gradients, a defence and a camera the real codec.
    """
    import cv2

    from testbed.inputs import bounded_int

    q = bounded_int("JPEG quality", quality, *JPEG_QUALITY_RANGE)
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageError(f"jpeg_round_trip needs an HxWx3 uint8 RGB array, got "
                         f"{getattr(rgb, 'dtype', type(rgb).__name__)} {getattr(rgb, 'shape', '')}")
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, q])
    if not ok:
        raise ImageError("OpenCV could not JPEG-encode the image")
    return cv2.imdecode(encoded, cv2.IMREAD_COLOR_RGB)
