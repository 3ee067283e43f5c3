"""Registry of the project's from-scratch architectures, and one way to build any encoder.

Families in ``transferkit/archs/`` register short factory functions, as timm
does::

    @register_arch(default_input=(3, 32, 32))
    def resnet18(num_classes: int = 10, in_chans: int = 3, **kw) -> ResNet:
        return ResNet(BasicBlock, (2, 2, 2, 2), num_classes=num_classes, in_chans=in_chans, **kw)

Conventions every factory follows (the generic tests check them):

* keyword arguments ``num_classes`` and ``in_chans``;
* ``num_classes=0`` returns the pooled feature vector ``(N, num_features)``
  instead of logits, and the module has an int attribute ``num_features``;
* ``default_input`` is a small (C, H, W) the network accepts, used by tests.

:func:`create_encoder` builds a feature extractor from either a registered
architecture (random init) or a timm backbone with pretrained weights, so that
every task can take ``--encoder NAME`` / ``--backbone NAME``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from transferkit.errors import TransferkitError


@dataclass(frozen=True)
class ArchEntry:
    name: str
    factory: Callable[..., Any]
    family: str
    default_input: tuple[int, int, int]
    description: str


_ARCHS: dict[str, ArchEntry] = {}


def register_arch(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    default_input: tuple[int, int, int] = (3, 32, 32),
    description: str | None = None,
):
    """Decorator registering an architecture factory under ``name`` (default: the function name).

    Registering a name twice is an error (two families must not fight over a name).
    """

    def wrap(f: Callable[..., Any]) -> Callable[..., Any]:
        key = name or f.__name__
        if key in _ARCHS:
            raise ValueError(f"Architecture {key!r} is already registered (by {_ARCHS[key].family}).")
        family = f.__module__.rsplit(".", 1)[-1]
        desc = description or ((f.__doc__ or "").strip().splitlines() or [""])[0]
        _ARCHS[key] = ArchEntry(key, f, family, tuple(default_input), desc)
        return f

    return wrap(fn) if fn is not None else wrap


def _ensure_loaded() -> None:
    from transferkit import archs

    archs.import_all()


def list_archs() -> dict[str, ArchEntry]:
    """All registered architectures, by name."""
    _ensure_loaded()
    return dict(_ARCHS)


def is_arch(name: str) -> bool:
    _ensure_loaded()
    return name in _ARCHS


def create_arch(name: str, **kwargs: Any) -> Any:
    """Build a registered architecture (random initialisation)."""
    _ensure_loaded()
    if name not in _ARCHS:
        raise TransferkitError(f"Unknown architecture {name!r}; registered: {', '.join(sorted(_ARCHS)) or 'none'}.")
    return _ARCHS[name].factory(**kwargs)


def create_encoder(name: str, in_chans: int = 3, weights: Any = "pretrained") -> tuple[Any, Any]:
    """A feature extractor ``(N, C, H, W) -> (N, num_features)`` and its preprocessing.

    Args:
        name: a registered architecture (built from scratch) or a timm model /
            registered pretrained weight name (pretrained, resolved offline
            first, see :func:`transferkit.core.backbones.resolve`).  Where
            both have the name (``resnet18``), the registered one wins;
            ``timm/resnet18`` asks for timm's.
        in_chans: input channels for from-scratch architectures.  Pretrained
            backbones take RGB; feed grey images as three equal channels.
        weights: ``"pretrained"`` (default), ``None`` for random init of a timm
            architecture, or a weights file path.

    Returns:
        (module with ``num_features``, :class:`Preprocessing` or None for from-scratch nets)
    """
    if name.startswith("timm/"):
        name = name[len("timm/"):]
    elif is_arch(name):
        return create_arch(name, num_classes=0, in_chans=in_chans), None
    from transferkit.core.backbones import Preprocessing, _entry_for, resolve

    if weights is None:
        import timm

        entry = _entry_for(name)
        module = timm.create_model(entry.architecture, pretrained=False, num_classes=0)
        return module, entry.preprocessing
    resolved = resolve(name, None if weights == "pretrained" else weights)
    module = resolved.module
    module.reset_classifier(0)
    pre: Preprocessing = resolved.preprocessing
    return module, pre
