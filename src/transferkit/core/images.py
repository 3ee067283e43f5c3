"""The one place images are read.

Every task reads pixels through :func:`read_image`, so every task gets the same
answers to the awkward cases: EXIF orientation, palette/alpha/CMYK/16-bit modes,
truncated or empty files, and decompression bombs (Pillow's limit is kept).

Bad files raise :class:`~transferkit.errors.ImageReadError`; callers that walk
many files collect them with :class:`SkipLog`, which prints one warning line per
file and a count at the end (or raises at once in ``strict`` mode).
"""

from __future__ import annotations

import glob
import io
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from transferkit.errors import ImageReadError, TransferkitError

# Extensions picked up when walking a folder.  A file named explicitly on the
# command line is always tried, whatever its extension.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm"}
)

# Never let Pillow fill in missing bytes of a truncated file: a half-grey
# picture is worse than a skipped one.
from PIL import ImageFile  # noqa: E402

ImageFile.LOAD_TRUNCATED_IMAGES = False


def is_image_path(path: Path) -> bool:
    """True when ``path`` has an image file extension (case-insensitive)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _has_glob_magic(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def list_images(inputs: Sequence[str | os.PathLike], recursive: bool = True) -> list[Path]:
    """Expand files, folders (walked recursively) and glob patterns into image paths.

    Folders contribute files with an image extension, sorted; hidden files and
    folders are ignored.  Files named explicitly are kept whatever their
    extension, so that a bad file gets a clear message instead of vanishing.
    Duplicates are removed, first occurrence wins.

    Raises:
        TransferkitError: a path does not exist, or nothing at all was found.
    """
    found: list[Path] = []
    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            walker = path.rglob("*") if recursive else path.glob("*")
            found.extend(
                sorted(
                    p
                    for p in walker
                    if p.is_file() and is_image_path(p) and not any(part.startswith(".") for part in p.relative_to(path).parts)
                )
            )
        elif path.is_file():
            found.append(path)
        elif _has_glob_magic(text):
            matches = sorted(Path(m) for m in glob.glob(text, recursive=True))
            files = [m for m in matches if m.is_file()]
            if not files:
                raise TransferkitError(f"The pattern {text!r} matches no files.")
            found.extend(files)
        else:
            raise TransferkitError(f"No such file or folder: {text}")
    unique = list(dict.fromkeys(found))
    if not unique:
        raise TransferkitError(
            "No images found in " + ", ".join(os.fspath(i) for i in inputs) + f" (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})."
        )
    return unique


def _sixteen_bit_to_l(img: Image.Image) -> Image.Image:
    """Scale a 16/32-bit integer or float grayscale image down to 8-bit 'L'."""
    arr = np.asarray(img)
    if img.mode == "F":
        arr = arr.astype(np.float64)
        top = 1.0 if np.nanmax(arr) <= 1.0 else 255.0
        arr = np.clip(np.nan_to_num(arr) / top * 255.0, 0, 255)
    else:
        arr = arr.astype(np.int64)
        lo, hi = int(arr.min()), int(arr.max())
        if lo >= 0 and hi <= 65535:
            arr = arr / 257.0  # 65535 -> 255 exactly
        else:  # 32-bit data of unknown range: stretch to 0..255
            arr = (arr - lo) / max(hi - lo, 1) * 255.0
    return Image.fromarray(np.round(arr).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB.

    Alpha (RGBA, LA, PA, palette with transparency) is composited on
    ``background`` (white) instead of being dropped, so transparent regions do
    not turn black.  16-bit and float grayscale are scaled, not clipped.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("LA", "PA", "La", "RGBa"):
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode == "RGBA":
        canvas = Image.new("RGB", img.size, background)
        canvas.paste(img, mask=img.getchannel("A"))
        return canvas
    if mode.startswith("I") or mode == "F":
        return _sixteen_bit_to_l(img).convert("RGB")
    # L, 1, CMYK, YCbCr, LAB, HSV, RGBX ...: Pillow's conversions are right.
    return img.convert("RGB")


def read_image(path: str | os.PathLike, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Read one image as an 8-bit RGB Pillow image, upright (EXIF orientation applied).

    Args:
        path: the file.
        draft_size: optional (width, height) the caller will resize to; JPEGs are
            then decoded at the smallest DCT scale that stays at least that big,
            which makes large photos several times faster to read.

    Raises:
        ImageReadError: empty, truncated, not an image, or over Pillow's
            decompression-bomb limit.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise ImageReadError(path, f"cannot be opened ({err.strerror or err})") from None
    if size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    return _decode(path, path, draft_size)


def decode_image_bytes(data: bytes, name: str = "upload", draft_size: tuple[int, int] | None = None,
                       max_bytes: int | None = None, max_pixels: int | None = None) -> Image.Image:
    """:func:`read_image` for bytes already in memory (an upload): the same modes, EXIF and truncation rules.

    Stricter than files, since anyone who can reach a service can send them:
    ``max_bytes`` bounds the encoded size, and images over ``max_pixels``
    (default: Pillow's ``MAX_IMAGE_PIXELS``, where files only warn) are refused
    before their pixels are decoded.

    Args:
        name: what error messages call the image (never opened as a path).

    Raises:
        ImageReadError: empty, too large, truncated, not an image, or a decompression bomb.
    """
    import io

    if not data:
        raise ImageReadError(name, "empty upload (0 bytes)")
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageReadError(name, f"upload of {len(data):,} bytes is over the {max_bytes:,}-byte limit")
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        return _decode(io.BytesIO(data), name, draft_size, limit)
    except ImageReadError:
        raise
    except Exception as err:  # hostile bytes can trip any decoder; a service answers, never crashes
        raise ImageReadError(name, f"unreadable image ({type(err).__name__})") from None


def _decode(source, name, draft_size: tuple[int, int] | None, max_pixels: int | None = None) -> Image.Image:
    """Open, bound, load, orient and convert one image; every failure becomes one :class:`ImageReadError`."""
    try:
        with Image.open(source) as img:
            if max_pixels and img.width * img.height > max_pixels:
                raise ImageReadError(name, f"image is larger than the decompression-bomb limit "
                                           f"({img.width}x{img.height} pixels, limit {max_pixels:,})")
            if draft_size is not None and img.format == "JPEG":
                img.draft(None, draft_size)
            img.load()
            try:
                img = ImageOps.exif_transpose(img)
            except Exception:  # a broken EXIF block should not cost the picture
                pass
            return to_rgb(img)
    except ImageReadError:
        raise
    except Image.DecompressionBombError:
        raise ImageReadError(name, "image is larger than Pillow's decompression-bomb limit") from None
    except UnidentifiedImageError:
        raise ImageReadError(name, "not an image file Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as err:
        reason = str(err) or type(err).__name__
        if "truncated" in reason.lower():
            reason = "truncated image file"
        raise ImageReadError(name, f"unreadable image ({reason})") from None


_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"


def read_image_uint8(path: str | os.PathLike, draft_size: tuple[int, int] | None = None):
    """Read one image as an upright RGB uint8 tensor (3, H, W): the same pixels as :func:`read_image`, faster.

    Whole, plain (RGB or greyscale) JPEGs that DCT scaling would not shrink are
    decoded by torchvision's libjpeg-turbo ``decode_jpeg`` straight into a
    tensor (EXIF orientation applied): about 1.5x faster than Pillow plus the
    PIL-to-tensor copy, and the same pixels (``tests/test_decode.py`` checks it).
    Everything else (other formats, CMYK, a file that does not end with the
    JPEG end marker, a photo that ``draft_size`` lets Pillow decode at 1/2, 1/4
    or 1/8 scale, any decoder error) goes through :func:`read_image`, so bad
    files raise the same :class:`~transferkit.errors.ImageReadError`.
    """
    import torch

    try:
        with open(path, "rb") as f:
            data = f.read()
        if data[:3] == _JPEG_SOI and data.rstrip(b"\x00\r\n ")[-2:] == _JPEG_EOI:
            with Image.open(io.BytesIO(data)) as img:  # header only: size, mode, decompression-bomb check
                w, h = img.size
                plain = img.mode in ("RGB", "L")
            shrinks = draft_size is not None and w // 2 >= draft_size[0] and h // 2 >= draft_size[1]
            if plain and not shrinks:
                from torchvision.io import ImageReadMode, decode_jpeg

                out = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB,
                                  apply_exif_orientation=True)
                if out.ndim == 3 and out.shape[0] == 3:
                    return out
    except Exception:  # noqa: BLE001 - any doubt: Pillow decides, and reports bad files properly
        pass
    from torchvision.transforms.v2.functional import pil_to_tensor

    return pil_to_tensor(read_image(path, draft_size))


@dataclass
class SkipLog:
    """Collects files that could not be read.

    ``strict=True`` turns the first bad file into an error; otherwise each bad
    file gets one warning line on stderr and :meth:`summary` gives the count.
    """

    strict: bool = False
    skipped: list[ImageReadError] = field(default_factory=list)
    stream: object = None

    def add(self, err: ImageReadError) -> None:
        if self.strict:
            raise TransferkitError(f"Cannot read {err.path}: {err.reason} (--strict is on).")
        self.skipped.append(err)
        print(f"warning: skipped {err.path}: {err.reason}", file=self.stream or sys.stderr, flush=True)

    def summary(self) -> str | None:
        """One line naming how many files were skipped, or None."""
        if not self.skipped:
            return None
        n = len(self.skipped)
        return f"skipped {n} unreadable file{'s' if n != 1 else ''}: " + ", ".join(e.path for e in self.skipped)


def read_many(paths: Iterable[Path], skips: SkipLog) -> list[tuple[Path, Image.Image]]:
    """Read several images, sending bad ones to ``skips``; returns (path, image) pairs."""
    out = []
    for p in paths:
        try:
            out.append((p, read_image(p)))
        except ImageReadError as err:
            skips.add(err)
    return out


def sample_images() -> list[tuple[str, Image.Image]]:
    """scikit-image's bundled photos (no download): name and RGB image."""
    from skimage import data as skdata

    names = ["chelsea", "coffee", "astronaut", "rocket", "camera"]
    out = []
    for name in names:
        loader = getattr(skdata, name, None)
        if loader is None:
            continue
        arr = np.asarray(loader())
        out.append((f"skimage:{name}", to_rgb(Image.fromarray(arr))))
    return out


# --------------------------------------------------------------------------- drawings


INK_MARGIN = 0.08  # blank border kept around the ink's bounding box, as a fraction of its longer side


def crop_to_ink(img: np.ndarray, margin: float = INK_MARGIN) -> np.ndarray:
    """The square around a drawing's ink, at full resolution: uint8 (H, W) -> (S, S).

    The background is the median of the border pixels, ink is anything more
    than 64 grey levels away from it. The square is centred on the ink's
    bounding box, its side the box's longer side plus ``margin`` on each side
    (the aspect ratio is kept), padded with background where it leaves the
    image. Two drawings of one character by different people then fill the
    frame alike: position and size, which say nothing about the character,
    are gone, and the network sees the strokes at a higher resolution. An
    image without ink is returned unchanged.
    """
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    background = int(np.median(border))
    ys, xs = np.nonzero(np.abs(img.astype(np.int16) - background) > 64)
    if len(ys) == 0:
        return img
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    side = int(round(max(y1 - y0, x1 - x0) * (1 + 2 * margin))) + 2
    top = int(round((y0 + y1 - side) / 2))
    left = int(round((x0 + x1 - side) / 2))
    out = np.full((side, side), background, np.uint8)
    h, w = img.shape
    sy0, sy1, sx0, sx1 = max(0, top), min(h, top + side), max(0, left), min(w, left + side)
    out[sy0 - top:sy1 - top, sx0 - left:sx1 - left] = img[sy0:sy1, sx0:sx1]
    return out


class InkCrop:
    """PIL image -> the square around its ink (:func:`crop_to_ink` of its grey version), as an RGB PIL image.

    Put in front of a model's generic transform (``transferkit features
    --model RUN``) for a Siamese model saved with ``--crop-ink``, so that it sees
    drawings as it did in training.  A top-level class, so DataLoader workers can
    pickle it.
    """

    def __call__(self, img: Image.Image) -> Image.Image:
        return Image.fromarray(crop_to_ink(np.asarray(img.convert("L"), dtype=np.uint8))).convert("RGB")
