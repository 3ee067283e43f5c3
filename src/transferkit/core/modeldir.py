"""The model directory: ``config.json`` + ``model.safetensors``, written atomically, loaded safely.

Every task saves its final model in this format, and ``transferkit predict
--model DIR`` (or :func:`load`) reads it without knowing which task made it:
``config.json`` names the task, and the task's builder
(``transferkit.tasks.<task>:build_model(config)``, or an entry of
:data:`TASK_BUILDERS`) rebuilds the empty network from the config.  The weights are
then read from safetensors (no pickle, so loading never runs code from the
file) with ``strict=True``.

``config.json`` keys shared by all tasks::

    format, format_version, task, architecture, num_classes, class_names,
    preprocessing, transferkit_version, training (free-form metadata)

Tasks add their own keys (e.g. a seq2seq vocabulary).  A run directory that
holds its model in ``model/`` can be passed wherever a model directory is.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from transferkit.errors import TransferkitError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "transferkit-model"
FORMAT_VERSION = 1

# task name -> "module:function" that builds the (untrained) nn.Module from config.json.
# Tasks not listed here follow the convention ``transferkit.tasks.<task>:build_model``.
# Imported lazily so loading one kind of model never imports every task.
TASK_BUILDERS: dict[str, str] = {
    "pretrained": "transferkit.core.backbones:build_pretrained",
}


# --------------------------------------------------------------------------- atomic files


_FILE_MODE: int | None = None


def _file_mode() -> int:
    """The mode ``open()`` would give a new file (0o666 less the umask); ``mkstemp`` would give 0o600."""
    global _FILE_MODE
    if _FILE_MODE is None:
        mask = os.umask(0o022)
        os.umask(mask)
        _FILE_MODE = 0o666 & ~mask
    return _FILE_MODE


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``.

    A crash leaves either the old file or the new one, never half of one (and a
    hidden ``.NAME.XXXX.tmp`` beside it, which :func:`transferkit.core.engine.clean_stale_temporaries`
    removes on resume).  A failed write (disk full) removes its temporary and
    raises; the old file stays.  The file gets the usual permissions (umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def save_tensors(state: dict[str, Any], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Save a state dict as safetensors, atomically.

    Tensors are made contiguous and independent (tied weights are stored twice;
    ``load_state_dict`` restores both names).
    """
    from safetensors.torch import save as st_save

    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    return atomic_write_bytes(path, st_save(clean, metadata=metadata))


def unwrap_module(module: Any) -> Any:
    """The plain module under ``torch.compile`` (``_orig_mod``) and DDP (``module``) wrappers."""
    import torch

    while True:
        if hasattr(module, "_orig_mod"):
            module = module._orig_mod
        elif isinstance(module, torch.nn.parallel.DistributedDataParallel):
            module = module.module
        else:
            return module


# --------------------------------------------------------------------------- the model object


class TransferModel:
    """A network plus the config that says how to feed it and read its outputs.

    Attributes:
        module: the ``torch.nn.Module`` (eval mode after loading).
        config: the ``config.json`` dictionary.
    """

    def __init__(self, module: Any, config: dict[str, Any]):
        self.module = module
        self.config = dict(config)

    @property
    def task(self) -> str:
        return self.config["task"]

    @property
    def architecture(self) -> str:
        return self.config.get("architecture", "?")

    @property
    def class_names(self) -> list[str]:
        return list(self.config.get("class_names") or [])

    @property
    def preprocessing(self):
        from transferkit.core.backbones import Preprocessing

        return Preprocessing.from_dict(self.config.get("preprocessing") or {})

    @property
    def crops_ink(self) -> bool:
        """Whether the model was trained on drawings cropped to their ink (``siamese fit --crop-ink``)."""
        return bool((self.config.get("siamese") or {}).get("ink"))

    def transform(self) -> Any:
        """The eval transform (PIL image -> tensor) of this model: its preprocessing's, after the crop to
        the ink for a model trained so, so that every command reads images as training did."""
        transform = self.preprocessing.transform()
        if not self.crops_ink:
            return transform
        from torchvision.transforms import v2

        from transferkit.core.images import InkCrop

        return v2.Compose([InkCrop(), transform])

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model directory (see :func:`save_model_dir`)."""
        return save_model_dir(self.module, self.config, path)

    def __repr__(self) -> str:
        n = self.config.get("num_classes")
        return f"TransferModel(task={self.task!r}, architecture={self.architecture!r}, num_classes={n})"


def _version() -> str:
    from transferkit import __version__

    return __version__


def save_model_dir(module: Any, config: dict[str, Any], path: str | os.PathLike) -> Path:
    """Save ``module`` and ``config`` as a model directory at ``path``, atomically.

    Both files are written into a temporary sibling folder which then replaces
    ``path`` with renames, so an interrupted save never leaves a directory that
    mixes old weights with a new config.  An existing folder that is not a model
    directory is never overwritten.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise TransferkitError(f"{path} exists and is a file; choose another output folder.")
    if path.is_dir() and any(path.iterdir()) and not (path / CONFIG_FILE).is_file():
        raise TransferkitError(f"{path} exists and is not a transferkit model directory; not overwriting it.")
    path.parent.mkdir(parents=True, exist_ok=True)
    full = {"format": FORMAT, "format_version": FORMAT_VERSION, **config, "transferkit_version": _version()}
    module = unwrap_module(module)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        os.chmod(tmp, _file_mode() | ((_file_mode() & 0o444) >> 2))  # like mkdir: rwx where the umask allows rw
        save_tensors(module.state_dict(), tmp / WEIGHTS_FILE)
        atomic_write_text(tmp / CONFIG_FILE, json.dumps(full, indent=2, ensure_ascii=False))
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
            os.replace(path, old / "m")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def find_model_dir(path: str | os.PathLike) -> Path | None:
    """The model directory at ``path`` or in its ``model/`` subfolder (a run directory), else None."""
    path = Path(path)
    for cand in (path, path / "model"):
        if (cand / CONFIG_FILE).is_file():
            return cand
    return None


def read_config(model_dir: str | os.PathLike) -> dict[str, Any]:
    """Read and check a model directory's ``config.json``."""
    found = find_model_dir(model_dir)
    if found is None:
        raise TransferkitError(f"{model_dir} is not a transferkit model directory (no {CONFIG_FILE}).")
    try:
        config = json.loads((found / CONFIG_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TransferkitError(f"{found / CONFIG_FILE} is not valid JSON ({err}).") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT or "task" not in config:
        raise TransferkitError(f"{found / CONFIG_FILE} is not a transferkit model config.")
    if int(config.get("format_version", 0)) > FORMAT_VERSION:
        raise TransferkitError(
            f"{found} was written by a newer transferkit (format {config['format_version']}); upgrade transferkit to read it."
        )
    return config


def build_module(config: dict[str, Any]) -> Any:
    """Rebuild the untrained network a config describes, via its task's builder."""
    task = str(config["task"])
    target = TASK_BUILDERS.get(task) or f"transferkit.tasks.{task}:build_model"
    module_name, func_name = target.split(":")
    try:
        builder = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError):
        raise TransferkitError(f"Unknown task {task!r} in the model config (no builder {target}).") from None
    return builder(config)


def load(path: str | os.PathLike) -> TransferModel:
    """Load a model directory (or a run directory holding ``model/``) safely.

    Raises:
        TransferkitError: missing or malformed files, or weights that do not
            match the architecture in the config.
    """
    found = find_model_dir(path)
    if found is None:
        raise TransferkitError(f"{path} is not a transferkit model directory (no {CONFIG_FILE}).")
    config = read_config(found)
    weights = found / WEIGHTS_FILE
    if not weights.is_file():
        raise TransferkitError(f"{found} has no {WEIGHTS_FILE}.")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise TransferkitError(f"{weights} is damaged or not a safetensors file ({err}).") from None
    module = build_module(config)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise TransferkitError(f"The weights in {weights} do not match the architecture in its config ({first}).") from None
    module.eval()
    return TransferModel(module, config)
