"""Data augmentation pipelines (torchvision transforms v2) built from a typed config.

:class:`AugmentConfig` names every augmentation a user can ask for, with the
CLI flag it becomes (``add_config_args`` generates them) and the YAML key of
``--config``.  :func:`train_transform` turns it into a ``v2.Compose``:

    geometry      random resized crop (--crop-scale, --crop-ratio), flips (--hflip, --vflip),
                  rotation (--rotate), translation (--translate), scaling (--scale)
    colour        colour jitter (--jitter brightness,contrast,saturation,hue),
                  colour cast (--color-cast: a random offset per R/G/B channel),
                  Gaussian blur (--blur probability, --blur-sigma lo,hi)
    noise         Gaussian (--gaussian-noise sigma), additive uniform (--additive-noise a),
                  multiplicative / speckle (--multiplicative-noise sigma)

then scales to float in [0, 1] and normalises.  Everything before the noise
runs on ``uint8`` tensors (cheap); noise runs on floats.  The pixel-wise
transforms touch images only, so bounding boxes and masks in a v2 sample pass
through them unchanged (detection reuses this module).  :func:`eval_transform`
is the deterministic counterpart (resize + centre crop, the weights' own
preprocessing).

Other tasks subclass :class:`AugmentConfig` (changing defaults, e.g. no flips
for digits) and call the same builders.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Optional, Sequence

from transferkit.core.config import doc
from transferkit.errors import TransferkitError


@dataclass
class AugmentConfig:
    """Training-time augmentation.  Defaults: random resized crop + horizontal flip + light colour jitter.

    The defaults were chosen by measurement on ants/bees (see BENCHMARKS.md):
    crop + flip + mild jitter generalise best for photos; rotation, blur and
    noise are off unless asked for.
    """

    augment: bool = doc("apply training augmentation at all (--no-augment: only resize and centre crop)", True)
    crop_scale: tuple[float, ...] = doc("random resized crop: range of the crop's area fraction (1,1 = no random crop)", (0.35, 1.0))
    crop_ratio: tuple[float, ...] = doc("random resized crop: range of the crop's aspect ratio", (0.75, 1.3333))
    hflip: float = doc("probability of a horizontal flip", 0.5)
    vflip: float = doc("probability of a vertical flip", 0.0)
    rotate: float = doc("random rotation, up to +-this many degrees", 0.0)
    translate: float = doc("random translation, up to this fraction of width/height", 0.0)
    scale: tuple[float, ...] = doc("random zoom range (affine scale), e.g. 0.9,1.1", (1.0, 1.0))
    jitter: tuple[float, ...] = doc("colour jitter strengths: brightness,contrast,saturation,hue (one value: the first three)",
                                    (0.2, 0.2, 0.2, 0.0))
    color_cast: float = doc("colour cast: random offset per R/G/B channel, up to this fraction of full scale", 0.0)
    blur: float = doc("probability of a Gaussian blur", 0.0)
    blur_sigma: tuple[float, ...] = doc("Gaussian blur sigma range in pixels", (0.1, 2.0))
    gaussian_noise: float = doc("additive Gaussian noise: standard deviation (pixels scaled to [0,1])", 0.0)
    additive_noise: float = doc("additive uniform noise: up to +-this (pixels scaled to [0,1])", 0.0)
    multiplicative_noise: float = doc("multiplicative (speckle) noise: pixel * (1 + N(0, sigma))", 0.0)

    def validate_augment(self) -> None:
        """Clear errors for values that would fail deep inside torchvision."""
        def pair(name: str, v: Sequence[float], lo: float = 0.0, hi: float | None = None) -> None:
            if len(v) != 2 or v[0] > v[1] or v[0] < lo or (hi is not None and v[1] > hi):
                bound = f" within [{lo}, {hi}]" if hi is not None else f" >= {lo}"
                raise TransferkitError(f"--{name.replace('_', '-')} needs two numbers lo,hi with lo <= hi{bound} (got {','.join(map(str, v))}).")

        pair("crop_scale", self.crop_scale, 1e-3, 1.0)
        pair("crop_ratio", self.crop_ratio, 1e-3)
        pair("scale", self.scale, 1e-3)
        pair("blur_sigma", self.blur_sigma, 1e-3)
        for name in ("hflip", "vflip", "blur"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise TransferkitError(f"--{name} is a probability between 0 and 1 (got {v}).")
        for name in ("rotate", "translate", "color_cast", "gaussian_noise", "additive_noise", "multiplicative_noise"):
            if getattr(self, name) < 0:
                raise TransferkitError(f"--{name.replace('_', '-')} must not be negative (got {getattr(self, name)}).")
        if self.translate > 1:
            raise TransferkitError(f"--translate is a fraction of the image size, at most 1 (got {self.translate}).")
        if not 1 <= len(self.jitter) <= 4 or any(j < 0 for j in self.jitter):
            raise TransferkitError("--jitter takes 1 to 4 non-negative numbers: brightness,contrast,saturation,hue.")
        if len(self.jitter) == 4 and self.jitter[3] > 0.5:
            raise TransferkitError(f"--jitter hue must be at most 0.5 (got {self.jitter[3]}).")


AUGMENT_FIELDS = tuple(f.name for f in fields(AugmentConfig))


def augment_options(cfg: Any) -> AugmentConfig:
    """The :class:`AugmentConfig` part of a larger config (any object with the same attributes)."""
    if isinstance(cfg, AugmentConfig) and type(cfg) is AugmentConfig:
        return cfg
    return AugmentConfig(**{k: getattr(cfg, k) for k in AUGMENT_FIELDS if hasattr(cfg, k)})


# --------------------------------------------------------------------------- custom pixel transforms


def _is_plain_tensor(x: Any) -> bool:
    import torch

    return type(x) is torch.Tensor


def _pixel_transform_base():
    """v2.Transform subclass that transforms images (tv_tensors.Image, plain tensors) and nothing else."""
    import torchvision.transforms.v2 as v2
    from torchvision import tv_tensors

    class PixelTransform(v2.Transform):
        _transformed_types = (tv_tensors.Image, tv_tensors.Video, _is_plain_tensor)

    return PixelTransform


def _classes():
    """Build (once) the custom v2 transforms; torchvision is imported only when augmenting."""
    global _CUSTOM
    if _CUSTOM is not None:
        return _CUSTOM
    import torch

    Base = _pixel_transform_base()

    def _full_scale(x: Any) -> float:
        return 255.0 if x.dtype == torch.uint8 else 1.0

    def _back(x: Any, like: Any) -> Any:
        top = _full_scale(like)
        x = x.clamp(0, top)
        out = x.round().to(like.dtype) if like.dtype == torch.uint8 else x.to(like.dtype)
        return out.as_subclass(type(like)) if type(like) is not torch.Tensor else out

    class ColorCast(Base):
        """Add a random offset to each colour channel: a colour cast (Keras's ``channel_shift_range``).

        Args:
            shift: largest offset as a fraction of full scale (0.1: up to +-25 levels of 255).
        """

        def __init__(self, shift: float):
            super().__init__()
            self.shift = float(shift)

        def make_params(self, flat_inputs):
            c = next((x.shape[-3] for x in flat_inputs if hasattr(x, "shape") and x.ndim >= 3), 3)
            return {"offset": (torch.rand(c) * 2 - 1) * self.shift}

        def transform(self, inpt, params):
            off = params["offset"].view(-1, 1, 1) * _full_scale(inpt)
            return _back(inpt.float() + off[: inpt.shape[-3]], inpt)

    class AdditiveNoise(Base):
        """Add independent uniform noise in ``[-amount, amount]`` (fraction of full scale) to every pixel."""

        def __init__(self, amount: float):
            super().__init__()
            self.amount = float(amount)

        def transform(self, inpt, params):
            noise = (torch.rand(inpt.shape) * 2 - 1) * self.amount * _full_scale(inpt)
            return _back(inpt.float() + noise, inpt)

    class MultiplicativeNoise(Base):
        """Multiply every pixel by ``1 + N(0, sigma^2)`` (speckle noise)."""

        def __init__(self, sigma: float):
            super().__init__()
            self.sigma = float(sigma)

        def transform(self, inpt, params):
            return _back(inpt.float() * (1 + torch.randn(inpt.shape) * self.sigma), inpt)

    class GaussianNoise(Base):
        """Add ``N(0, sigma^2)`` noise (fraction of full scale) to every pixel; uint8 or float images."""

        def __init__(self, sigma: float):
            super().__init__()
            self.sigma = float(sigma)

        def transform(self, inpt, params):
            return _back(inpt.float() + torch.randn(inpt.shape) * self.sigma * _full_scale(inpt), inpt)

    _CUSTOM = {"ColorCast": ColorCast, "AdditiveNoise": AdditiveNoise, "MultiplicativeNoise": MultiplicativeNoise,
               "GaussianNoise": GaussianNoise}
    return _CUSTOM


_CUSTOM: dict[str, Any] | None = None


def ColorCast(shift: float):  # noqa: N802 - a factory that reads like the class it returns
    """A :class:`ColorCast` v2 transform (see :func:`_classes`)."""
    return _classes()["ColorCast"](shift)


def AdditiveNoise(amount: float):  # noqa: N802
    return _classes()["AdditiveNoise"](amount)


def MultiplicativeNoise(sigma: float):  # noqa: N802
    return _classes()["MultiplicativeNoise"](sigma)


def GaussianNoise(sigma: float):  # noqa: N802
    return _classes()["GaussianNoise"](sigma)


# --------------------------------------------------------------------------- pipelines


def _size2(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    s = tuple(int(v) for v in size)
    return (s[-2], s[-1]) if len(s) >= 2 else (s[0], s[0])


def _interp(name: str):
    from torchvision.transforms import InterpolationMode

    return {"bicubic": InterpolationMode.BICUBIC, "nearest": InterpolationMode.NEAREST}.get(name, InterpolationMode.BILINEAR)


def geometry_ops(cfg: AugmentConfig, size: tuple[int, int], resize_size: int | None = None,
                 interpolation: str = "bilinear") -> list[Any]:
    """The geometric part: random resized crop (or resize + centre crop), flips, affine."""
    import torchvision.transforms.v2 as v2

    ops: list[Any] = []
    if tuple(cfg.crop_scale) != (1.0, 1.0):
        ops.append(v2.RandomResizedCrop(size, scale=tuple(cfg.crop_scale), ratio=tuple(cfg.crop_ratio),
                                        interpolation=_interp(interpolation), antialias=True))
    else:
        ops += [v2.Resize(resize_size or min(size), interpolation=_interp(interpolation), antialias=True), v2.CenterCrop(size)]
    if cfg.hflip > 0:
        ops.append(v2.RandomHorizontalFlip(cfg.hflip))
    if cfg.vflip > 0:
        ops.append(v2.RandomVerticalFlip(cfg.vflip))
    if cfg.rotate > 0 or cfg.translate > 0 or tuple(cfg.scale) != (1.0, 1.0):
        ops.append(v2.RandomAffine(
            degrees=cfg.rotate,
            translate=(cfg.translate, cfg.translate) if cfg.translate > 0 else None,
            scale=tuple(cfg.scale) if tuple(cfg.scale) != (1.0, 1.0) else None,
            interpolation=_interp("bilinear"),
        ))
    return ops


def colour_ops(cfg: AugmentConfig, channels: int = 3) -> list[Any]:
    """Colour jitter, colour cast and blur (on uint8 images)."""
    import torchvision.transforms.v2 as v2

    ops: list[Any] = []
    j = tuple(cfg.jitter)
    if len(j) == 1:
        j = (j[0], j[0], j[0], 0.0)
    j = tuple(j) + (0.0,) * (4 - len(j))
    if channels != 3:
        j = (j[0], j[1], 0.0, 0.0)  # saturation and hue need colour
    if any(v > 0 for v in j):
        ops.append(v2.ColorJitter(brightness=j[0] or None, contrast=j[1] or None, saturation=j[2] or None, hue=j[3] or None))
    if cfg.color_cast > 0:
        ops.append(ColorCast(cfg.color_cast))
    if cfg.blur > 0:
        lo, hi = cfg.blur_sigma
        k = max(3, int(2 * round(3 * hi) + 1))
        ops.append(v2.RandomApply([v2.GaussianBlur(k, sigma=(lo, hi))], p=cfg.blur))
    return ops


def noise_ops(cfg: AugmentConfig) -> list[Any]:
    """Noise (on float images in [0, 1])."""
    ops: list[Any] = []
    if cfg.gaussian_noise > 0:
        ops.append(GaussianNoise(cfg.gaussian_noise))
    if cfg.additive_noise > 0:
        ops.append(AdditiveNoise(cfg.additive_noise))
    if cfg.multiplicative_noise > 0:
        ops.append(MultiplicativeNoise(cfg.multiplicative_noise))
    return ops


def train_transform(cfg: AugmentConfig | Any, size: int | Sequence[int], mean: Sequence[float] | None = None,
                    std: Sequence[float] | None = None, channels: int = 3, resize_size: int | None = None,
                    interpolation: str = "bilinear"):
    """The training pipeline: image (PIL, ndarray HWC or uint8 tensor CHW) -> float tensor (C, H, W).

    Args:
        cfg: an :class:`AugmentConfig` (or a config with its fields).
        size: output (H, W) or one int.
        mean, std: normalisation after scaling to [0, 1]; None leaves [0, 1]
            (what pictures of the augmentations want).
        channels: 3 for colour; 1 turns off saturation and hue jitter.
        resize_size: short side before the centre crop when the random crop is off.
    """
    import torch
    import torchvision.transforms.v2 as v2

    cfg = augment_options(cfg)
    cfg.validate_augment()
    size = _size2(size)
    if not cfg.augment:
        return eval_transform(size, mean, std, resize_size, interpolation)
    ops: list[Any] = [v2.ToImage()]
    ops += geometry_ops(cfg, size, resize_size, interpolation)
    ops += colour_ops(cfg, channels)
    ops.append(v2.ToDtype(torch.float32, scale=True))
    ops += noise_ops(cfg)
    if mean is not None and std is not None:
        ops.append(v2.Normalize(list(mean), list(std)))
    return v2.Compose(ops)


def eval_transform(size: int | Sequence[int], mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                   resize_size: int | None = None, interpolation: str = "bilinear"):
    """Deterministic pipeline: resize the short side to ``resize_size`` (default: the crop), centre crop, scale, normalise."""
    import torch
    import torchvision.transforms.v2 as v2

    size = _size2(size)
    ops: list[Any] = [v2.ToImage(), v2.Resize(resize_size or min(size), interpolation=_interp(interpolation), antialias=True),
                      v2.CenterCrop(size), v2.ToDtype(torch.float32, scale=True)]
    if mean is not None and std is not None:
        ops.append(v2.Normalize(list(mean), list(std)))
    return v2.Compose(ops)


def describe(cfg: AugmentConfig | Any) -> list[str]:
    """Human-readable list of the augmentations a config switches on (for logs and reports)."""
    cfg = augment_options(cfg)
    if not cfg.augment:
        return ["none"]
    out = []
    if tuple(cfg.crop_scale) != (1.0, 1.0):
        out.append(f"random resized crop (area {cfg.crop_scale[0]:g}-{cfg.crop_scale[1]:g})")
    if cfg.hflip:
        out.append(f"horizontal flip (p={cfg.hflip:g})")
    if cfg.vflip:
        out.append(f"vertical flip (p={cfg.vflip:g})")
    if cfg.rotate:
        out.append(f"rotation (+-{cfg.rotate:g} deg)")
    if cfg.translate:
        out.append(f"translation (+-{cfg.translate:g})")
    if tuple(cfg.scale) != (1.0, 1.0):
        out.append(f"scale ({cfg.scale[0]:g}-{cfg.scale[1]:g})")
    if any(v > 0 for v in cfg.jitter):
        out.append("colour jitter (" + ",".join(f"{v:g}" for v in cfg.jitter) + ")")
    if cfg.color_cast:
        out.append(f"colour cast (+-{cfg.color_cast:g})")
    if cfg.blur:
        out.append(f"Gaussian blur (p={cfg.blur:g}, sigma {cfg.blur_sigma[0]:g}-{cfg.blur_sigma[1]:g})")
    if cfg.gaussian_noise:
        out.append(f"Gaussian noise (sigma={cfg.gaussian_noise:g})")
    if cfg.additive_noise:
        out.append(f"additive noise (+-{cfg.additive_noise:g})")
    if cfg.multiplicative_noise:
        out.append(f"multiplicative noise (sigma={cfg.multiplicative_noise:g})")
    return out or ["none"]


def preview_grid(images: Sequence[Any], cfg: AugmentConfig | Any, size: int | Sequence[int], per_image: int = 7,
                 seed: int = 0, titles: Sequence[str] | None = None, channels: int = 3):
    """A matplotlib figure: each row one image, first its plain resize, then ``per_image`` augmented draws."""
    import torch

    from transferkit.core.report import image_grid

    torch.manual_seed(seed)
    hw = _size2(size)
    plain = eval_transform(hw)
    aug = train_transform(cfg, hw, channels=channels)
    tiles, names = [], []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small per-image ops: one thread is several times faster than two fighting
    try:
        for i, img in enumerate(images):
            img = shrink(img, int(min(hw) * 1.15))
            tiles.append(plain(img).permute(1, 2, 0).numpy())
            names.append((titles[i] if titles else f"image {i}")[:24])
            for k in range(per_image):
                tiles.append(aug(img).permute(1, 2, 0).numpy())
                names.append(f"augmented {k + 1}")
    finally:
        torch.set_num_threads(threads)
    return image_grid(tiles, names, ncols=per_image + 1, size=1.6)


def shrink(img: Any, short_side: int, resample: str = "bicubic") -> Any:
    """A PIL image whose short side is at most ``short_side`` (never enlarged): decode once, augment cheaply."""
    from PIL import Image

    w, h = img.size
    s = min(w, h)
    if s <= short_side:
        return img
    scale = short_side / s
    filt = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}.get(resample, Image.BICUBIC)
    return img.resize((max(1, round(w * scale)), max(1, round(h * scale))), filt)
