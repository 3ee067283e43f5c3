"""Layering: ``transferkit.core`` never imports from ``transferkit.tasks`` (arrows point down only).

Every module under ``src/transferkit/core`` is parsed (not imported) and every ``import`` /
``from ... import`` statement in it, at any depth (module level, inside functions, methods,
``if TYPE_CHECKING`` blocks), is resolved to an absolute module name, relative imports included.
Looking a task's builder up by name at run time (``modeldir.build_module`` reads the task from
``config.json``) is not an import statement and is not what this checks.
"""

from __future__ import annotations

import ast
from pathlib import Path

import transferkit.core

CORE = Path(transferkit.core.__file__).parent
FORBIDDEN = "transferkit.tasks"


def _imported_modules(source: str, module: str, is_package: bool = False) -> list[tuple[int, list[str]]]:
    """Each import statement in ``source`` (the module named ``module``): its line and the absolute
    module names it may import (``from a import b`` may import ``a`` or ``a.b``)."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.append((node.lineno, [alias.name for alias in node.names]))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            found.append((node.lineno, [name] + [f"{name}.{alias.name}" for alias in node.names]))
    return found


def _forbidden(name: str) -> bool:
    return name == FORBIDDEN or name.startswith(FORBIDDEN + ".")


def _task_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    """One line per import statement of ``source`` that reaches into ``transferkit.tasks``."""
    bad = []
    for line, names in _imported_modules(source, module, is_package):
        hit = next((n for n in names if _forbidden(n)), None)
        if hit:
            bad.append(f"{module}:{line} imports {hit}")
    return bad


def test_the_check_sees_every_kind_of_import():
    source = (
        "import os\n"
        "from transferkit.core import images\n"
        "def f():\n"
        "    from transferkit.tasks.siamese.data import InkCrop\n"
        "class C:\n"
        "    def m(self):\n"
        "        import transferkit.tasks.detect\n"
        "        from ..tasks import gan\n"
        "        from .. import tasks\n"
        "        from transferkit import tasks as t\n"
    )
    found = _task_imports(source, "transferkit.core.x")
    assert [f.split(":")[1].split()[0] for f in found] == ["4", "7", "8", "9", "10"]
    assert _task_imports("from . import images\nfrom ..errors import TransferkitError\n", "transferkit.core.x") == []
    # relative imports in a package's __init__ resolve from the package itself
    assert _task_imports("from .tasks import gan\n", "transferkit.core", is_package=True) == []
    assert _task_imports("from ..tasks import gan\n", "transferkit.core", is_package=True)
    assert _task_imports("from ..tasks import gan\n", "transferkit.core.sub", is_package=True) == []


def test_core_never_imports_tasks():
    files = sorted(CORE.rglob("*.py"))
    assert len(files) > 10  # the walk found the package
    bad = []
    for path in files:
        rel = path.relative_to(CORE.parent).with_suffix("")
        is_package = path.name == "__init__.py"
        module = ".".join(("transferkit",) + (rel.parent.parts if is_package else rel.parts))
        bad += _task_imports(path.read_text(encoding="utf-8"), module, is_package)
    assert not bad, "core/ must not import from tasks/ (move the piece down into core/):\n" + "\n".join(bad)


TASK_PACKAGES = ("autoencoder", "caption", "classify", "detect", "gan", "index", "novelty", "seq2seq", "siamese")


def test_task_packages_export_lazily():
    """Importing a task package loads none of its heavy modules; every name it exports resolves on use."""
    import subprocess
    import sys

    code = (
        "import importlib, sys\n"
        f"for p in {TASK_PACKAGES!r}:\n"
        "    m = importlib.import_module('transferkit.tasks.' + p)\n"
        "    assert 'torch' not in sys.modules, p\n"
        "    loaded = [k for k in sys.modules if k.startswith(m.__name__ + '.')]\n"
        "    assert not any(k.endswith(('.train', '.model', '.models')) for k in loaded), (p, loaded)\n"
        f"for p in {TASK_PACKAGES!r}:\n"
        "    m = sys.modules['transferkit.tasks.' + p]\n"
        "    for name in m.__all__:\n"
        "        assert getattr(m, name) is not None and name in dir(m), (p, name)\n"
        "    try:\n"
        "        m.no_such_name\n"
        "    except AttributeError as err:\n"
        "        assert 'no_such_name' in str(err)\n"
        "    else:\n"
        "        raise AssertionError(p)\n"
        "from transferkit.tasks.detect import build_model\n"
        "assert build_model.__name__ == 'build_network'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
