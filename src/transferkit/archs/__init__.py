"""From-scratch architecture families, registered by name (see ``transferkit.core.registry``).

Each module here defines its blocks first and the networks that use them after,
and registers short factory functions with ``@register_arch``.  Importing this
package imports every family so the registry is complete.
"""

from __future__ import annotations

import importlib

# Family modules, imported lazily by ``transferkit.core.registry.list_archs``.
FAMILIES: tuple[str, ...] = ()


def import_all() -> None:
    """Import every family module so that all architectures are registered."""
    for name in FAMILIES:
        importlib.import_module(f"{__name__}.{name}")
