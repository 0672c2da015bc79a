"""Image bytes -> PIL image -> model tensors.

EXIF orientation is applied (``ImageOps.exif_transpose``). Label Studio draws images with an
``<img>`` element and takes a region's ``original_width/height`` from its ``naturalWidth`` /
``naturalHeight``; browsers apply EXIF orientation by default (CSS ``image-orientation:
from-image``, Chrome 81+, Firefox 77+, Safari 13.1+), and those sizes are the *oriented* ones.
So masks must be built on the upright image: a rotated JPEG then gets width and height
swapped exactly as the annotator sees it.
"""
from __future__ import annotations

import io
import warnings
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ml_backend.data.fetch import DataError


def load_image(data: bytes, max_pixels: Optional[int] = None) -> Image.Image:
    """Decode ``data`` into an upright RGB image (first frame of animations); an image of more than
    ``max_pixels`` is refused from its header, before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if max_pixels is not None and width * height > max_pixels:
                raise DataError(f"image is {width} x {height} pixels, over the limit of {max_pixels / 1e6:g} "
                                "megapixels (MAX_IMAGE_MEGAPIXELS)")
            img.load()
            img = ImageOps.exif_transpose(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(f"image is too large to decode (over {Image.MAX_IMAGE_PIXELS} pixels)") from None
    except UnidentifiedImageError:
        head = data[:16]
        raise DataError(f"not an image Pillow can read ({len(data)} bytes starting {head!r})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot decode image: {exc}") from None
    return img if img.mode == "RGB" else img.convert("RGB")


def image_to_tensor(img: Image.Image, size: int) -> torch.Tensor:
    """A (3, size, size) float tensor in [0, 1], resized bilinearly.

    The aspect ratio is not kept: the image is stretched to a square, and model-resolution
    masks are stretched back to the image's own width and height.
    """
    if img.mode != "RGB":
        img = img.convert("RGB")
    if img.size != (size, size):
        # Pillow's bilinear filter widens its support when shrinking, so it also antialiases.
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def images_to_batch(imgs: Sequence[Image.Image], size: int) -> torch.Tensor:
    """A (N, 3, size, size) batch of :func:`image_to_tensor`."""
    if not imgs:
        return torch.zeros((0, 3, size, size))
    return torch.stack([image_to_tensor(img, size) for img in imgs])
