"""From-scratch architecture families, registered by name (see ``transferkit.core.registry``).

Each module here is one family: it defines its blocks first and the networks
that use them after, and registers short factory functions with
``@register_arch``.  :func:`import_all` imports every module of this package,
so a new family needs no edit here.
"""

from __future__ import annotations

import importlib
import pkgutil


def import_all() -> None:
    """Import every family module so that all architectures are registered."""
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
