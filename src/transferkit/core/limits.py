"""What bounds one training run, as ``Trainer`` options: gradient clipping and a wall-clock budget.

The budget of ``--time-budget`` / ``--time-limit`` is for the whole fit; :func:`trainer_limits` gives
the trainer what is left of it after the setup already spent, less a reserve for the steps after
training (restoring the best checkpoint, saving, the final evaluation, the report).
"""

from __future__ import annotations

import time
from typing import Any

from transferkit.errors import TransferkitError

MIN_TRAIN_SECONDS = 5.0


def trainer_limits(clip: float, minutes: float | None, started: float, reserve_s: float,
                   flag: str = "--time-budget") -> dict[str, Any]:
    """``Trainer`` keyword arguments: ``gradient_clip_val`` when ``clip > 0``, ``max_time`` when ``minutes`` is set.

    ``started`` is the fit's ``time.monotonic()`` at its start; the reserve is ``reserve_s`` or 8 % of
    the budget, whichever is larger.

    Raises:
        TransferkitError: the budget leaves less than 5 s to train (``flag`` names the option).
    """
    extra: dict[str, Any] = {}
    if clip > 0:
        extra["gradient_clip_val"] = clip
    if minutes is not None:
        budget = minutes * 60.0
        train_s = budget - max(reserve_s, 0.08 * budget) - (time.monotonic() - started)
        if train_s < MIN_TRAIN_SECONDS:
            raise TransferkitError(f"{flag} {minutes} minutes leaves no time to train; give more.")
        extra["max_time"] = {"seconds": int(train_s)}
    return extra
