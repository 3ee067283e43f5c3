"""core.augment: v2 pipelines from AugmentConfig, custom pixel transforms, `augment preview`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import make_class_folders
from transferkit.core import augment as A
from transferkit.errors import TransferkitError

OFF = dict(crop_scale=(1.0, 1.0), hflip=0.0, jitter=(0.0,))


def photo(h=60, w=80, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h) + 60], -1) + rng.normal(0, 8, (h, w, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def test_no_augment_is_the_eval_transform():
    img = photo()
    a = A.train_transform(A.AugmentConfig(augment=False), 32, resize_size=36)(img)
    b = A.eval_transform(32, resize_size=36)(img)
    assert torch.equal(a, b) and a.shape == (3, 32, 32)
    torch.manual_seed(0)
    c = A.train_transform(A.AugmentConfig(**OFF), 32, resize_size=36)(img)
    assert torch.equal(b, c)  # every option off == deterministic


@pytest.mark.parametrize("option", [
    dict(crop_scale=(0.3, 0.6)), dict(hflip=1.0), dict(vflip=1.0), dict(rotate=30.0), dict(translate=0.3),
    dict(scale=(1.3, 1.5)), dict(jitter=(0.5, 0.5, 0.5, 0.2)), dict(color_cast=0.3), dict(blur=1.0, blur_sigma=(2.0, 3.0)),
    dict(gaussian_noise=0.1), dict(additive_noise=0.1), dict(multiplicative_noise=0.2),
])
def test_each_augmentation_changes_the_image_and_keeps_shape_and_range(option):
    img = photo()
    base = A.eval_transform(48)(img)
    torch.manual_seed(1)
    out = A.train_transform(A.AugmentConfig(**{**OFF, **option}), 48)(img)
    assert out.shape == (3, 48, 48) and out.dtype == torch.float32
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    assert float((out - base).abs().mean()) > 0.005, option


def test_normalisation_and_seeded_reproducibility():
    cfg = A.AugmentConfig(rotate=10, color_cast=0.1, gaussian_noise=0.05)
    tf = A.train_transform(cfg, 32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    torch.manual_seed(3)
    a = tf(photo())
    torch.manual_seed(3)
    b = tf(photo())
    assert torch.equal(a, b)
    assert float(a.min()) < 0  # normalised


def test_grey_images_skip_saturation_and_hue():
    grey = torch.randint(0, 255, (1, 40, 40), dtype=torch.uint8)
    out = A.train_transform(A.AugmentConfig(jitter=(0.3, 0.3, 0.3, 0.1), color_cast=0.1), 32, channels=1)(grey)
    assert out.shape == (1, 32, 32)


def test_pixel_transforms_leave_boxes_alone_and_flip_moves_them():
    from torchvision import tv_tensors

    img = tv_tensors.Image(torch.randint(0, 255, (3, 40, 60), dtype=torch.uint8))
    boxes = tv_tensors.BoundingBoxes([[5, 5, 20, 30]], format="XYXY", canvas_size=(40, 60))
    for t in (A.ColorCast(0.2), A.GaussianNoise(0.1), A.AdditiveNoise(0.1), A.MultiplicativeNoise(0.1)):
        out_img, out_boxes = t(img, boxes)
        assert isinstance(out_img, tv_tensors.Image) and out_img.dtype == torch.uint8
        assert not torch.equal(out_img, img)
        assert torch.equal(out_boxes, boxes)
    import torchvision.transforms.v2 as v2

    _, flipped = v2.RandomHorizontalFlip(1.0)(img, boxes)
    assert flipped.tolist() == [[40, 5, 55, 30]]


def test_colour_cast_shifts_each_channel_by_one_offset():
    flat = torch.full((3, 10, 10), 100, dtype=torch.uint8)
    torch.manual_seed(0)
    out = A.ColorCast(0.2)(flat)
    per_channel = out.view(3, -1)
    assert all(len(torch.unique(c)) == 1 for c in per_channel)  # one offset per channel
    assert len(torch.unique(per_channel[:, 0])) > 1  # different offsets across channels
    assert int((per_channel[:, 0].int() - 100).abs().max()) <= 51


@pytest.mark.parametrize("bad, message", [
    (dict(crop_scale=(0.9, 0.2)), "crop-scale"),
    (dict(hflip=1.5), "probability"),
    (dict(rotate=-1.0), "negative"),
    (dict(jitter=(0.1, 0.1, 0.1, 0.9)), "hue"),
    (dict(translate=2.0), "fraction"),
])
def test_bad_settings_give_clear_errors(bad, message):
    with pytest.raises(TransferkitError, match=message):
        A.train_transform(A.AugmentConfig(**bad), 32)


def test_describe_lists_what_is_on():
    assert A.describe(A.AugmentConfig(augment=False)) == ["none"]
    text = " ".join(A.describe(A.AugmentConfig(rotate=5, multiplicative_noise=0.1)))
    assert "rotation" in text and "multiplicative" in text and "horizontal flip" in text


def test_cli_preview_writes_a_grid(cli, tmp_path):
    data = make_class_folders(tmp_path / "imgs", n_per_class=3, size=48)
    cfg = tmp_path / "aug.yaml"
    cfg.write_text("rotate: 25\ncolor_cast: 0.2\ngaussian_noise: 0.05\n")
    out = tmp_path / "grid.png"
    r = cli("augment", "preview", data, "--out", out, "--images", "3", "--per-image", "4", "--size", "64", "--config", cfg)
    assert r.returncode == 0, r.stderr
    assert "rotation (+-25 deg)" in r.stdout and "Gaussian noise" in r.stdout
    with Image.open(out) as im:
        w, h = im.size
    assert w > h > 100  # 5 columns x 3 rows


def test_cli_preview_bad_input(cli, tmp_path):
    data = make_class_folders(tmp_path / "imgs", n_per_class=2, size=32)
    r = cli("augment", "preview", data, "--out", tmp_path / "g.png", "--hflip", "2")
    assert r.returncode == 2 and "probability" in r.stderr and "Traceback" not in r.stderr
    r = cli("augment", "preview", tmp_path / "missing", "--out", tmp_path / "g.png")
    assert r.returncode == 2 and "No such file or folder" in r.stderr
