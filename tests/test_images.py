"""Robust image reading: a generated corpus of awkward files, every one handled or clearly skipped."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from transferkit.core.images import SkipLog, list_images, read_image, to_rgb
from transferkit.errors import ImageReadError, TransferkitError


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


@pytest.fixture
def corpus(tmp_path):
    """Every awkward case named in the issue, plus two broken files."""
    d = tmp_path / "awkward"
    d.mkdir()
    red = Image.new("RGB", (16, 12), (255, 0, 0))
    _save(red, d / "rgb.png")
    _save(Image.new("L", (16, 12), 77), d / "grey.png")
    _save(red.convert("P", palette=Image.ADAPTIVE), d / "palette.gif")
    rgba = Image.new("RGBA", (16, 12), (0, 0, 255, 0))  # fully transparent blue -> white
    _save(rgba, d / "alpha.png")
    _save(Image.new("LA", (16, 12), (0, 0)), d / "grey_alpha.png")
    _save(Image.new("CMYK", (16, 12), (0, 255, 255, 0)), d / "cmyk.jpg")  # C=0 M=Y=255 -> red
    sixteen = Image.fromarray(np.full((12, 16), 65535, dtype=np.uint16))
    _save(sixteen, d / "sixteen.png")
    _save(Image.new("1", (16, 12), 1), d / "bilevel.png")
    _save(red, d / "with space.png")
    _save(red, d / "étiquette_日本.png")
    _save(red, d / "upper.JPEG", format="JPEG")
    # EXIF orientation 6: stored 16x12, shown rotated by 90 degrees -> 12x16
    exif = Image.Exif()
    exif[0x0112] = 6
    _save(Image.new("RGB", (16, 12), (0, 128, 0)), d / "rotated.jpg", exif=exif.tobytes())
    # broken ones
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="JPEG")
    (d / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (d / "empty.jpg").write_bytes(b"")
    (d / "not_an_image.png").write_text("hello, I am text")
    (d / "notes.txt").write_text("ignored: not an image extension")
    return d


def test_every_mode_reads_as_rgb(corpus):
    for name in ["rgb.png", "grey.png", "palette.gif", "alpha.png", "grey_alpha.png", "cmyk.jpg", "sixteen.png",
                 "bilevel.png", "with space.png", "étiquette_日本.png", "upper.JPEG", "rotated.jpg"]:
        img = read_image(corpus / name)
        assert img.mode == "RGB", name


def test_conversions_are_right(corpus):
    px = lambda name: np.asarray(read_image(corpus / name))[5, 5].tolist()  # noqa: E731
    assert px("grey.png") == [77, 77, 77]
    assert px("palette.gif") == [255, 0, 0]
    assert px("alpha.png") == [255, 255, 255]  # transparent composited on white, not black
    assert px("grey_alpha.png") == [255, 255, 255]
    assert px("sixteen.png") == [255, 255, 255]  # 65535 scales to 255, not clipped from the low byte
    assert px("bilevel.png") == [255, 255, 255]
    r, g, b = px("cmyk.jpg")
    assert r > 200 and g < 60 and b < 60


def test_sixteen_bit_midtones_scale():
    img = Image.fromarray(np.array([[0, 257 * 128, 65535]], dtype=np.uint16))
    assert np.asarray(to_rgb(img))[0, :, 0].tolist() == [0, 128, 255]


def test_exif_orientation_applied(corpus):
    img = read_image(corpus / "rotated.jpg")
    assert img.size == (12, 16)


def test_broken_files_raise_with_reason(corpus):
    with pytest.raises(ImageReadError, match="truncated"):
        read_image(corpus / "truncated.jpg")
    with pytest.raises(ImageReadError, match="empty file"):
        read_image(corpus / "empty.jpg")
    with pytest.raises(ImageReadError, match="not an image"):
        read_image(corpus / "not_an_image.png")


def test_decompression_bomb_limit_is_kept(tmp_path, monkeypatch):
    path = _save(Image.new("RGB", (100, 100)), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 10,000 px > 2 x limit -> Pillow's bomb error
    with pytest.raises(ImageReadError, match="decompression-bomb"):
        read_image(path)


def test_list_images_walks_folders_and_globs(corpus, tmp_path):
    found = list_images([corpus])
    names = {p.name for p in found}
    assert "notes.txt" not in names and "with space.png" in names and "upper.JPEG" in names
    assert len(found) == 15
    assert [p.name for p in list_images([str(corpus / "*.gif")])] == ["palette.gif"]
    with pytest.raises(TransferkitError, match="No such file"):
        list_images([tmp_path / "missing"])
    with pytest.raises(TransferkitError, match="matches no files"):
        list_images([str(corpus / "*.webp")])


def test_skiplog_counts_and_strict(corpus, capsys):
    log = SkipLog()
    for name in ["truncated.jpg", "empty.jpg"]:
        try:
            read_image(corpus / name)
        except ImageReadError as err:
            log.add(err)
    err = capsys.readouterr().err
    assert "truncated.jpg" in err and "empty.jpg" in err
    assert log.summary().startswith("skipped 2 unreadable files")
    with pytest.raises(TransferkitError, match="--strict"):
        SkipLog(strict=True).add(ImageReadError("x.jpg", "empty file (0 bytes)"))


def test_draft_decoding_keeps_requested_size(tmp_path):
    path = _save(Image.new("RGB", (2000, 1500), (10, 20, 30)), tmp_path / "big.jpg", quality=90)
    img = read_image(path, draft_size=(256, 256))
    assert min(img.size) >= 256 and img.size[0] < 2000


# --------------------------------------------------------------------------- uploads: bytes in memory


def test_bytes_decode_like_files(corpus):
    from transferkit.core.images import decode_image_bytes

    for f in sorted(corpus.iterdir()):
        if f.suffix == ".txt" or f.name in ("truncated.jpg", "empty.jpg", "not_an_image.png"):
            continue
        got = decode_image_bytes(f.read_bytes(), f.name)
        want = read_image(f)
        assert got.mode == "RGB" and got.size == want.size, f.name
        assert np.array_equal(np.asarray(got), np.asarray(want)), f.name
    assert decode_image_bytes((corpus / "rotated.jpg").read_bytes()).size == (12, 16)  # EXIF applied


def test_bad_bytes_raise_one_sentence(corpus):
    from transferkit.core.images import decode_image_bytes

    cases = {"truncated": (corpus / "truncated.jpg").read_bytes(), "empty upload": b"",
             "not an image": b"hello, I am text", "limit": b"x" * 101}
    for reason, data in cases.items():
        with pytest.raises(ImageReadError, match=reason) as info:
            decode_image_bytes(data, "up.jpg", max_bytes=100 if reason == "limit" else None)
        assert "\n" not in str(info.value) and str(info.value).startswith("up.jpg: ")


def test_bytes_bomb_refused_before_decoding(monkeypatch):
    from transferkit.core.images import decode_image_bytes

    buf = io.BytesIO()
    Image.new("RGB", (100, 100)).save(buf, format="PNG")
    data = buf.getvalue()
    # between the limit and twice it, files only warn; uploads are refused
    with pytest.raises(ImageReadError, match="decompression-bomb"):
        decode_image_bytes(data, max_pixels=9_999)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)
    with pytest.raises(ImageReadError, match="decompression-bomb"):
        decode_image_bytes(data)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # over 2x: Pillow's own error, same answer
    with pytest.raises(ImageReadError, match="decompression-bomb"):
        decode_image_bytes(data)
