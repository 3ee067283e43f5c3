"""Typed run configs: dataclasses with documented defaults, CLI flags generated from them, YAML round trip.

A task declares its options once, as a dataclass whose fields carry their help
text in ``metadata={"help": ...}``.  :func:`add_config_args` turns the fields
into command-line flags (``head_layers`` -> ``--head-layers``); :func:`resolve`
merges, in increasing priority, the dataclass defaults, a ``--config FILE``
(YAML) and the flags the user actually typed.  The resolved config is saved
beside the run's results (:func:`save`), and ``--config that_file`` reproduces
the run.

Supported field types: ``int``, ``float``, ``str``, ``bool`` (``--x/--no-x``),
``Optional[...]`` of those, ``Literal[...]`` (choices) and ``tuple[int|float|str, ...]``
(comma-separated on the command line, a list in YAML).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from transferkit.errors import TransferkitError

C = TypeVar("C")


def doc(help: str, default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    """A dataclass field with help text: ``lr: float = doc("learning rate", 1e-3)``."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple for sequence defaults")
    return dataclasses.field(default=default, metadata={"help": help, **kw.pop("metadata", {})}, **kw)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _parse_scalar(tp: Any, text: str, name: str) -> Any:
    if get_origin(tp) is Literal:
        if text not in [str(c) for c in get_args(tp)]:
            choices = ", ".join(str(c) for c in get_args(tp))
            raise TransferkitError(f"{name} must be one of {choices} (got {text!r}).")
        for c in get_args(tp):
            if str(c) == text:
                return c
    try:
        if tp is bool:
            low = str(text).strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        return tp(text)
    except (TypeError, ValueError):
        raise TransferkitError(f"{name} must be {getattr(tp, '__name__', tp)} (got {text!r}).") from None


def coerce(tp: Any, value: Any, name: str) -> Any:
    """Convert ``value`` (from YAML or the command line) to the field type ``tp``, or raise a clear error."""
    tp, optional = _unwrap_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
        if optional:
            return None
        raise TransferkitError(f"{name} needs a value.")
    if get_origin(tp) is tuple:
        inner = get_args(tp)[0] if get_args(tp) else str
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",") if p.strip()]
        elif isinstance(value, (list, tuple)):
            parts = list(value)
        else:
            parts = [value]
        return tuple(_parse_scalar(inner, str(p), name) if not isinstance(p, inner) else p for p in parts)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) or get_origin(tp) is Literal:
        return _parse_scalar(tp, str(value), name)
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        return _parse_scalar(tp, str(value), name)
    return value


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def require(cfg: Any, names: str | tuple[str, ...], ok: typing.Callable[[Any], bool], must: str,
            got: bool = False) -> None:
    """One rule of a config's ``validate()``: each field in ``names`` that is set (not None) must pass ``ok``.

    The first that does not raises ``TransferkitError("--NAME must MUST.")``, with `` (got VALUE)`` before
    the full stop when ``got``::

        require(self, ("epochs", "batch_size"), lambda v: v >= 1, "be at least 1")
        require(self, "val_fraction", lambda v: 0 <= v < 1, "be in [0, 1)", got=True)
    """
    for name in (names,) if isinstance(names, str) else names:
        value = getattr(cfg, name)
        if value is not None and not ok(value):
            raise TransferkitError(f"{flag(name)} must {must}" + (f" (got {value})." if got else "."))


def add_config_args(parser: argparse.ArgumentParser, cls: type, exclude: tuple[str, ...] = ()) -> None:
    """Add one flag per dataclass field (defaults shown in help; unset flags stay unset).

    Also adds ``--config FILE``.  Fields listed in ``exclude`` (e.g. ones taken
    as positional arguments) get no flag.
    """
    hints = typing.get_type_hints(cls)
    parser.add_argument("--config", metavar="FILE", help="YAML config of a run (e.g. a run's config.yaml); flags override it")
    for f in dataclasses.fields(cls):
        if f.name in exclude or f.metadata.get("cli") is False:
            continue
        tp, _ = _unwrap_optional(hints[f.name])
        help_text = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else None
        if isinstance(default, tuple):
            default = ",".join(str(d) for d in default)
        help_text = f"{help_text} (default: {default})" if help_text else f"(default: {default})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if tp is bool:
            parser.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if get_origin(tp) is Literal:
            kwargs["choices"] = [str(c) for c in get_args(tp)]
        kwargs["metavar"] = f.metadata.get("metavar") or ("LIST" if get_origin(tp) is tuple else f.name.upper())
        parser.add_argument(flag(f.name), **kwargs)


def load(cls: type[C], path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML config file into a dict of checked values for ``cls`` (unknown keys are an error)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise TransferkitError(f"Config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise TransferkitError(f"{path} is not valid YAML ({str(err).splitlines()[0]}).") from None
    if not isinstance(data, dict):
        raise TransferkitError(f"{path} must hold a mapping of option: value.")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise TransferkitError(f"{path}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}.")
    return {k: coerce(hints[k], v, f"{k} in {path}") for k, v in data.items()}


def resolve(cls: type[C], args: argparse.Namespace | None = None, **overrides: Any) -> C:
    """Build ``cls`` from defaults <- ``args.config`` file <- flags given in ``args`` <- ``overrides``."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    if args is not None and getattr(args, "config", None):
        values.update(load(cls, args.config))
    if args is not None:
        for f in dataclasses.fields(cls):
            if hasattr(args, f.name):
                values[f.name] = coerce(hints[f.name], getattr(args, f.name), flag(f.name))
    for k, v in overrides.items():
        if v is not None:
            values[k] = coerce(hints[k], v, flag(k))
    try:
        cfg = cls(**values)
    except TypeError as err:
        raise TransferkitError(f"Incomplete configuration: {err}.") from None
    check = getattr(cfg, "validate", None)
    if callable(check):
        check()
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dict (tuples become lists) for YAML/JSON."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def save(cfg: Any, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML (atomically), with each field's help as a comment."""
    import yaml

    from transferkit.core.modeldir import atomic_write_text

    values = to_dict(cfg)
    lines = [f"# {type(cfg).__name__}: resolved configuration; `--config {Path(path).name}` reproduces this run"]
    for f in dataclasses.fields(cfg):
        if f.metadata.get("help"):
            lines.append(f"# {f.name}: {f.metadata['help']}")
        dumped = yaml.safe_dump({f.name: values[f.name]}, default_flow_style=False, sort_keys=False, allow_unicode=True)
        lines.append(dumped.rstrip("\n"))
    return atomic_write_text(path, "\n".join(lines) + "\n")
