"""Image decoding and tensors."""
from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from ml_backend.data.fetch import DataError
from ml_backend.data.images import image_to_tensor, images_to_batch, load_image


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_load_png_jpeg_and_modes():
    assert load_image(encode(Image.new("RGB", (5, 3), (10, 20, 30)))).getpixel((0, 0)) == (10, 20, 30)
    for mode in ("L", "RGBA", "P", "1", "I;16"):
        img = load_image(encode(Image.new(mode, (5, 3))))
        assert img.mode == "RGB" and img.size == (5, 3)
    jpeg = load_image(encode(Image.new("RGB", (8, 6), (200, 0, 0)), "JPEG"))
    assert jpeg.size == (8, 6) and jpeg.getpixel((4, 3))[0] > 150


def test_exif_orientation_is_applied():
    # 6 = "rotate 90 clockwise to display": stored 8x4, shown (and sized by the browser) 4x8
    img = Image.new("RGB", (8, 4), (0, 0, 255))
    img.putpixel((0, 0), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    upright = load_image(encode(img, "PNG", exif=exif))
    assert upright.size == (4, 8)
    assert upright.getpixel((3, 0)) == (255, 0, 0)  # the top-left pixel went to the top-right


def test_not_an_image():
    with pytest.raises(DataError, match="not an image"):
        load_image(b"<html>login</html>")
    with pytest.raises(DataError, match="not an image"):
        load_image(b"")
    with pytest.raises(DataError):
        load_image(encode(Image.new("RGB", (64, 64)), "JPEG")[:200])  # truncated


def test_decompression_bomb(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(DataError, match="too large"):
        load_image(encode(Image.new("RGB", (20, 20))))


def test_image_to_tensor_stretches_to_square():
    img = Image.new("RGB", (40, 10), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 10))  # right half blue
    t = image_to_tensor(img, 8)
    assert t.shape == (3, 8, 8) and t.dtype == torch.float32
    assert 0.0 <= float(t.min()) and float(t.max()) <= 1.0
    assert torch.allclose(t[:, :, 0], torch.tensor([1.0, 0.0, 0.0])[:, None].expand(3, 8))
    assert torch.allclose(t[:, :, -1], torch.tensor([0.0, 0.0, 1.0])[:, None].expand(3, 8))
    assert image_to_tensor(Image.new("L", (8, 8), 255), 8).eq(1.0).all()


def test_images_to_batch():
    imgs = [Image.new("RGB", (7, 5), (i * 50, 0, 0)) for i in range(3)]
    batch = images_to_batch(imgs, 16)
    assert batch.shape == (3, 3, 16, 16)
    assert torch.allclose(batch[2, 0], torch.full((16, 16), 100 / 255))
    assert images_to_batch([], 16).shape == (0, 3, 16, 16)


def test_a_pixel_budget_refuses_a_large_image_from_its_header():
    """A 9000 x 9000 grey PNG is a few KB on the wire and 81 MB decoded: refused before decoding."""
    data = encode(Image.new("L", (9000, 9000)))
    assert len(data) < 200_000
    with pytest.raises(DataError, match="9000 x 9000 pixels, over the limit of 40 megapixels"):
        load_image(data, max_pixels=40_000_000)
    assert load_image(encode(Image.new("RGB", (20, 10))), max_pixels=200).size == (20, 10)
