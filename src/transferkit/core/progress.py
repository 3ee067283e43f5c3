"""Progress reporting: a tqdm bar on a terminal, a few plain lines in logs (CI), nothing when asked.

``TRANSFERKIT_PROGRESS=0`` silences it; ``=1`` forces the bar.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def say(msg: str) -> None:
    """One progress or warning line on stderr, flushed at once (stdout stays for results)."""
    print(msg, file=sys.stderr, flush=True)


def progress_mode() -> str:
    """``bar`` on a terminal, ``lines`` otherwise, ``off`` when silenced."""
    env = os.environ.get("TRANSFERKIT_PROGRESS", "").strip().lower()
    if env in ("0", "off", "false", "no"):
        return "off"
    if env in ("1", "bar", "on", "true"):
        return "bar"
    return "bar" if sys.stderr.isatty() else "lines"


class _Lines:
    """Prints ``desc: done/total`` at most every ~10% or 30 s, and once at the end."""

    def __init__(self, total: int | None, desc: str, unit: str):
        self.total, self.desc, self.unit = total, desc, unit
        self.n = 0
        self.start = self.last = time.monotonic()
        self.next_frac = 0.1

    def update(self, k: int = 1) -> None:
        self.n += k
        now = time.monotonic()
        frac = self.n / self.total if self.total else 0.0
        if (self.total and frac >= self.next_frac) or now - self.last > 30:
            self._print(now)
            while self.total and self.next_frac <= frac:
                self.next_frac += 0.1

    def _print(self, now: float) -> None:
        self.last = now
        rate = self.n / max(now - self.start, 1e-9)
        total = f"/{self.total}" if self.total else ""
        print(f"{self.desc}: {self.n}{total} {self.unit} ({rate:.1f} {self.unit}/s)", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


class Progress:
    """Context manager with ``update(k)``; picks tqdm, plain lines or nothing."""

    def __init__(self, total: int | None, desc: str, unit: str = "it"):
        mode = progress_mode()
        if mode == "bar":
            from tqdm.auto import tqdm

            self._impl = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False)
        elif mode == "lines":
            self._impl = _Lines(total, desc, unit)
        else:
            self._impl = None

    def update(self, k: int = 1) -> None:
        if self._impl is not None:
            self._impl.update(k)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        if self._impl is not None:
            self._impl.close()


def track(items: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it") -> Iterator[T]:
    """Iterate with progress (see :class:`Progress`)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, desc, unit) as bar:
        for item in items:
            yield item
            bar.update(1)
