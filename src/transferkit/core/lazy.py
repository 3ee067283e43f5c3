"""Lazy exports: a package names what it offers without importing the modules that define it (PEP 562).

A package's ``__init__`` lists its public names and the submodule of each; the submodule (and torch,
Lightning... with it) is imported on first use, so importing the package and ``transferkit --help``
stay fast. The caller names its own package; nothing here knows any task::

    __getattr__, __dir__ = lazy_exports(__name__, {"fit": "train", "build_model": "model:build_network"})
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, Mapping


def lazy_exports(package: str, where: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package`` for the names in ``where``.

    ``where`` maps each exported name to ``"submodule"`` (relative to ``package``, defining that same name)
    or ``"submodule:attribute"`` (exported under another name).
    """
    targets = {name: (spec.partition(":")[0], spec.partition(":")[2] or name) for name, spec in where.items()}

    def __getattr__(name: str) -> Any:
        if name not in targets:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, attribute = targets[name]
        return getattr(importlib.import_module(f"{package}.{module}"), attribute)

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(targets))

    return __getattr__, __dir__
