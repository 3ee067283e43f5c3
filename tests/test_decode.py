"""Faster JPEG decoding for inference: read_image_uint8 gives exactly read_image's pixels, and the same errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2.functional import pil_to_tensor

from transferkit.core.images import read_image, read_image_uint8
from transferkit.errors import ImageReadError


def _photo(w=120, h=90, seed=0):
    from skimage import data

    arr = np.asarray(Image.fromarray(data.chelsea()).resize((w, h)))
    return Image.fromarray(arr)


def _same(path, draft=None):
    fast = read_image_uint8(path, draft)
    ref = pil_to_tensor(read_image(path, draft))
    assert fast.dtype == torch.uint8 and fast.shape == ref.shape
    assert int((fast.int() - ref.int()).abs().max()) == 0, path
    return fast


def test_same_pixels_as_pillow(tmp_path):
    img = _photo()
    img.save(tmp_path / "rgb.jpg", quality=90)
    assert _same(tmp_path / "rgb.jpg").shape == (3, 90, 120)
    img.convert("L").save(tmp_path / "grey.jpg")
    assert _same(tmp_path / "grey.jpg").shape == (3, 90, 120)
    img.convert("CMYK").save(tmp_path / "cmyk.jpg")  # Pillow's conversion decides (fallback path)
    _same(tmp_path / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to be upright
    img.save(tmp_path / "rot.jpg", exif=exif)
    assert _same(tmp_path / "rot.jpg").shape == (3, 120, 90)
    img.save(tmp_path / "a.png")
    _same(tmp_path / "a.png")
    # a big photo that DCT scaling may shrink goes through Pillow's draft mode, as before
    big = _photo(640, 480)
    big.save(tmp_path / "big.jpg")
    assert _same(tmp_path / "big.jpg", (256, 256)).shape == (3, 480, 640)
    _same(tmp_path / "big.jpg", (200, 200))
    assert tuple(read_image_uint8(tmp_path / "big.jpg", (200, 200)).shape[1:]) == (240, 320)  # decoded at 1/2


def test_bad_files_give_the_same_errors(tmp_path):
    _photo().save(tmp_path / "t.jpg")
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="truncated"):
        read_image_uint8(tmp_path / "cut.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        read_image_uint8(tmp_path / "empty.jpg")
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8\xff" + b"junk" * 10 + b"\xff\xd9")
    with pytest.raises(ImageReadError):
        read_image_uint8(tmp_path / "junk.jpg")


def test_batches_are_unchanged_by_the_fast_path(tmp_path):
    from transferkit.core.backbones import Preprocessing
    from transferkit.core.inference import iter_batches
    from transferkit.tasks.classify.features import _Mirrored

    for i in range(3):
        _photo(100 + 10 * i, 80, seed=i).save(tmp_path / f"{i}.jpg")
    paths = sorted(tmp_path.glob("*.jpg"))
    tf = Preprocessing(input_size=(3, 64, 64)).transform()
    assert tf.accepts_uint8 and _Mirrored(tf).accepts_uint8

    def slow(x):  # the same transform, through Pillow
        return tf(x)

    for t_fast, t_slow in ((tf, slow), (_Mirrored(tf), _Mirrored(slow))):
        (_, a), = list(iter_batches(paths, t_fast, batch_size=8, workers=0))
        (_, b), = list(iter_batches(paths, t_slow, batch_size=8, workers=0))
        assert torch.equal(a, b)
