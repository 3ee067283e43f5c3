"""User-facing errors.

Anything a user can cause (a missing file, a bad flag value, a model that cannot
be found offline) raises :class:`TransferkitError` with one clear sentence.  The
CLI prints that sentence and exits with status 2; it never shows a traceback for
these.  Programming errors stay ordinary exceptions.
"""

from __future__ import annotations


class TransferkitError(Exception):
    """An error caused by input the user can fix; ``str(err)`` is the message."""


class ImageReadError(TransferkitError):
    """One image file could not be read; carries the path and a short reason."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # picklable, so DataLoader workers can send it back
        return (type(self), (self.path, self.reason))


class RunInterrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C (SIGINT) or SIGTERM at a safe point (between batches).

    A ``KeyboardInterrupt`` so that ``except Exception`` does not swallow it.
    Attributes: ``signal`` ("SIGINT"/"SIGTERM"), ``run_dir``, ``checkpoint``
    (the last checkpoint kept, or None when none was written yet), ``epoch``
    (1-based epoch that was running), ``exit_status`` (130 or 143).
    """

    def __init__(self, signal: str, run_dir, checkpoint, epoch: int):
        self.signal = signal
        self.run_dir = str(run_dir) if run_dir is not None else None
        self.checkpoint = str(checkpoint) if checkpoint else None
        self.epoch = int(epoch)
        self.exit_status = 143 if signal == "SIGTERM" else 130
        super().__init__(self.describe())

    def describe(self, resume_hint: str = "resume=True continues it") -> str:
        """One line: what stopped, what was kept, how to continue."""
        how = "Ctrl-C" if self.signal == "SIGINT" else self.signal
        if self.checkpoint:
            return (f"interrupted ({how}) in epoch {self.epoch}; kept {self.checkpoint} "
                    f"(end of epoch {self.epoch - 1}; the interrupted epoch restarts); {resume_hint}")
        return (f"interrupted ({how}) in epoch {self.epoch}, before the first checkpoint; nothing to resume: "
                f"remove {self.run_dir} or choose a new --out, and start again")

    def __reduce__(self):
        return (type(self), (self.signal, self.run_dir, self.checkpoint, self.epoch))


class TrainingDiverged(TransferkitError):
    """The loss became NaN/Inf or exploded; training stopped and the diverged model was not saved."""
