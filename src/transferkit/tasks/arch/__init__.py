"""Architecture experiments: layer summaries (``arch summary``) and side-by-side training (``arch compare``).

Which network a name means
--------------------------
The project's own families (``transferkit/archs``, registered with
``@register_arch``) come first: ``resnet18`` is the from-scratch ResNet-18 of
``archs/resnet.py``, which has a plain twin ``plain18``.  Any other name that
timm knows is timm's architecture.  ``timm/NAME`` (or ``--timm`` on the command
line) asks for timm's even where the project has the same name
(``timm/resnet18``).  Pretrained weights are a different namespace:
``transferkit predict --model resnet50`` resolves through
:mod:`transferkit.core.backbones` and always means timm's pretrained model.

Architecture options
--------------------
A registered factory's keyword arguments other than ``num_classes`` and
``in_chans`` are its options (``width``, ``stem``, ``hidden``...): the command
line passes them as ``--arch-args width=16,stem=small``, typed by the
factory's annotations.

Model directories written by ``arch compare`` have ``"task": "arch"`` and are
rebuilt by :func:`build_model`.
"""

from __future__ import annotations

import difflib
import inspect
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from transferkit.errors import TransferkitError

TIMM_PREFIX = "timm/"
CORE_ARGS = ("num_classes", "in_chans")


@dataclass(frozen=True)
class ArchRef:
    """A resolved architecture name: ``source`` is ``transferkit`` (registry) or ``timm``."""

    name: str
    source: str

    @property
    def label(self) -> str:
        """How to write it so that it resolves to the same thing again."""
        return f"{TIMM_PREFIX}{self.name}" if self.source == "timm" else self.name


def resolve_arch(name: str, prefer_timm: bool = False) -> ArchRef:
    """Decide what ``name`` means: project registry first, then timm; ``timm/NAME`` or ``prefer_timm`` for timm's.

    Raises:
        TransferkitError: neither the registry nor timm knows the name (with close matches).
    """
    from transferkit.core.registry import is_arch, list_archs

    name = name.strip()
    if name.startswith(TIMM_PREFIX):
        name, prefer_timm = name[len(TIMM_PREFIX):], True
    if not prefer_timm and is_arch(name):
        return ArchRef(name, "transferkit")
    import timm

    if timm.is_model(name) or timm.is_model(name.split(".")[0]):
        return ArchRef(name, "timm")
    if prefer_timm:
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f" Close timm names: {', '.join(close)}." if close else ""
        raise TransferkitError(f"timm has no architecture {name!r}.{hint}")
    own = sorted(list_archs())
    close = difflib.get_close_matches(name, own, n=3) or difflib.get_close_matches(name, timm.list_models(), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise TransferkitError(
        f"Unknown architecture {name!r}: not a transferkit architecture (`transferkit arch list`) nor a timm one.{hint}"
    )


def arch_options(ref: ArchRef) -> dict[str, Any]:
    """The options (keyword name -> type) a registered factory accepts besides num_classes and in_chans.

    timm models take none here (their options are too many to type-check; use timm directly).
    """
    if ref.source != "transferkit":
        return {}
    from transferkit.core.registry import list_archs

    factory = list_archs()[ref.name].factory
    hints = typing.get_type_hints(factory)
    out = {}
    for p in inspect.signature(factory).parameters.values():
        if p.name in CORE_ARGS or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        out[p.name] = hints.get(p.name, str)
    return out


def parse_arch_args(items: Sequence[str] | str | Mapping[str, Any] | None) -> dict[str, str]:
    """``("width=16", "stem=small")`` or ``"width=16,stem=small"`` -> ``{"width": "16", "stem": "small"}``."""
    if not items:
        return {}
    if isinstance(items, Mapping):
        return {str(k): v for k, v in items.items()}
    if isinstance(items, str):
        items = [p for p in items.split(",") if p.strip()]
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise TransferkitError(f"Architecture options are KEY=VALUE pairs (e.g. width=16), not {item!r}.")
        out[key.strip()] = value.strip()
    return out


def typed_options(ref: ArchRef, raw: Mapping[str, Any], strict: bool = True) -> dict[str, Any]:
    """Keep the options ``ref`` accepts, converted to the factory's types.

    Args:
        strict: an option the factory does not take is an error (else it is skipped,
            which is what ``arch compare`` does for options meant for other networks).
    """
    from transferkit.core.config import coerce

    known = arch_options(ref)
    out = {}
    for key, value in raw.items():
        if key not in known:
            if strict:
                opts = ", ".join(sorted(known)) or "none"
                raise TransferkitError(f"{ref.label} has no option {key!r} (its options: {opts}).")
            continue
        out[key] = coerce(known[key], value, f"option {key} of {ref.label}")
    return out


def create_network(ref: ArchRef, num_classes: int | None = None, in_chans: int | None = None,
                   options: Mapping[str, Any] | None = None) -> Any:
    """Build ``ref`` with random weights (``None`` keeps the factory's default for classes/channels)."""
    kwargs: dict[str, Any] = dict(options or {})
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    if ref.source == "transferkit":
        from transferkit.core.registry import create_arch

        try:
            return create_arch(ref.name, **kwargs)
        except (ValueError, TypeError) as err:
            raise TransferkitError(f"Cannot build {ref.label} with {kwargs}: {err}.") from None
    import timm

    try:
        return timm.create_model(ref.name, pretrained=False, **kwargs)
    except (RuntimeError, ValueError, TypeError, AssertionError) as err:
        raise TransferkitError(f"timm cannot build {ref.name} with {kwargs}: {err}.") from None


def default_input(ref: ArchRef) -> tuple[int, int, int]:
    """The input (C, H, W) a summary uses by default: the registered one, or timm's pretrained config."""
    if ref.source == "transferkit":
        from transferkit.core.registry import list_archs

        return tuple(list_archs()[ref.name].default_input)  # type: ignore[return-value]
    import timm

    cfg = timm.models.get_pretrained_cfg(ref.name) or timm.models.get_pretrained_cfg(ref.name.split(".")[0])
    size = getattr(cfg, "input_size", None) if cfg is not None else None
    return tuple(size) if size else (3, 224, 224)  # type: ignore[return-value]


# --------------------------------------------------------------------------- model directories


def _grey_adapter():
    import torch
    from torch import nn

    class RGBToGrey(nn.Module):
        """Feeds a one-channel network from 3-channel images (what ``predict`` reads): the channel mean.

        Shapes: (N, 3, H, W) -> net((N, 1, H, W)).
        """

        def __init__(self, net: nn.Module):
            super().__init__()
            self.net = net
            self.num_features = getattr(net, "num_features", None)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[1] != 1:
                x = x.mean(dim=1, keepdim=True)
            return self.net(x)

    return RGBToGrey


def build_model(config: Mapping[str, Any]) -> Any:
    """Rebuild the (untrained) network a ``task: arch`` model directory describes."""
    try:
        ref = ArchRef(str(config["architecture"]), str(config.get("source", "transferkit")))
        net = create_network(ref, int(config["num_classes"]), int(config["in_chans"]), dict(config.get("arch_args") or {}))
    except KeyError as err:
        raise TransferkitError(f"The model config lacks {err}; it was not written by `transferkit arch compare`.") from None
    if config.get("input_adapter") == "rgb_to_grey":
        net = _grey_adapter()(net)
    return net


@dataclass
class NetworkSpec:
    """One network of a comparison: what to build and with which options."""

    ref: ArchRef
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.ref.label


__all__ = [
    "ArchRef",
    "NetworkSpec",
    "arch_options",
    "build_model",
    "create_network",
    "default_input",
    "parse_arch_args",
    "resolve_arch",
    "typed_options",
]
