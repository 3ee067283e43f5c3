"""Shared fixtures: the installed CLI in a subprocess, generated image sets, the optional shared data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TRANSFERKIT_SHARED_DATA", ROOT.parent / "shared" / "data"))

# Keep test runs quiet and off the network.
os.environ.setdefault("TRANSFERKIT_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One thread everywhere (this process, xdist workers and every CLI subprocess, which inherit the
# variable): a tiny model then computes the same numbers alone, in its file, in the whole suite
# and in a subprocess, and two xdist workers do not oversubscribe two cores.
os.environ["OMP_NUM_THREADS"] = "1"
import torch  # noqa: E402  (after OMP_NUM_THREADS, so that the setting takes)

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path, monkeypatch):
    """No state carried between tests: a fresh cache folder (weights, features) and reseeded RNGs.

    Training precision is left to ``$TRANSFERKIT_PRECISION`` (what ``--precision auto`` means), so
    the suite runs once with ``TRANSFERKIT_PRECISION=32`` and once with ``=bf16``; tests whose
    assertion depends on the numbers pin ``precision="32"`` themselves.
    """
    import random

    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "cache"))
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


def transferkit_cmd() -> list[str]:
    """The installed console script (next to this Python), else ``python -m transferkit``."""
    script = Path(sys.executable).with_name("transferkit")
    return [str(script)] if script.exists() else [sys.executable, "-m", "transferkit"]


def kill_at_first_checkpoint(args: list[str], env: dict, run: Path, timeout: float) -> subprocess.Popen:
    """Start ``transferkit ARGS``, SIGKILL it as soon as ``RUN/checkpoints/last.ckpt`` exists (or it ends, or
    ``timeout`` s pass); returns the finished process (its stderr still readable)."""
    import signal
    import time

    proc = subprocess.Popen([*transferkit_cmd(), *map(str, args)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.time() + timeout
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return proc


@pytest.fixture
def cli(tmp_path):
    """Run ``transferkit ARGS...`` in a subprocess; returns CompletedProcess with text output."""

    def run(*args: str, check: bool = False, env: dict | None = None, cwd: str | Path | None = None, timeout: int = 600):
        full_env = {**os.environ, "TRANSFERKIT_CACHE": str(tmp_path / "cache"), **(env or {})}
        proc = subprocess.run(
            [*transferkit_cmd(), *map(str, args)], capture_output=True, text=True, env=full_env,
            cwd=cwd or tmp_path, timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"transferkit {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    return run


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, or skip with a visible reason when it is absent (fresh clones have none)."""
    if not SHARED.is_dir():
        pytest.skip(f"shared data folder {SHARED} is absent (only on development machines)")
    return SHARED


def make_class_folders(root: Path, n_per_class: int = 12, size: int = 40, classes=("red", "green", "blue"), seed: int = 0) -> Path:
    """Write a tiny, learnable image set: one folder per colour, noisy images dominated by that colour."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200), "grey": (128, 128, 128)}
    for c in classes:
        d = root / c
        d.mkdir(parents=True, exist_ok=True)
        base = np.array(colours.get(c, rng.integers(0, 255, 3)), dtype=np.float32)
        for i in range(n_per_class):
            img = base + rng.normal(0, 25, (size, size, 3))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"{c}_{i:03d}.png")
    return root


@pytest.fixture
def colour_folders(tmp_path) -> Path:
    return make_class_folders(tmp_path / "colours")
