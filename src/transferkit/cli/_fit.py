"""Helpers shared by the ``... fit`` commands (not a command group: ``main`` skips ``_`` modules)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable, TypeVar

C = TypeVar("C")


def resolve_fit_config(cls: type[C], args: argparse.Namespace, required_by: str | None = None) -> C:
    """The config a fit trains with: defaults <- ``--config`` <- flags (:func:`transferkit.core.config.resolve`).

    With ``--resume`` and no ``--config``, the interrupted run's own ``OUT/config.yaml`` takes the place of
    ``--config`` (flags typed now still override it).  ``required_by`` (e.g. ``"classify fit"``): resuming a
    folder without that file is an error naming the command that makes it.
    """
    from transferkit.core.config import resolve
    from transferkit.errors import TransferkitError

    if args.resume:
        saved = Path(args.out) / "config.yaml"
        if required_by and not saved.is_file():
            raise TransferkitError(f"Nothing to resume in {args.out}: no config.yaml (was it made by `{required_by}`?).")
        if not getattr(args, "config", None) and saved.is_file():
            args.config = str(saved)
    return resolve(cls, args)


def print_fit_result(r: dict[str, Any], summary: Callable[[dict[str, Any]], str], as_json: bool) -> None:
    """What a text-model fit prints: its result as one JSON line, or the held-out summary and where things are."""
    if as_json:
        print(json.dumps(r))
        return
    print(f"held-out: {summary(r)}")
    print(f"model: {r['model_dir']}  report: {Path(r['run_dir']) / 'report.html'}  ({r['fit_seconds'] / 60:.1f} min)")
