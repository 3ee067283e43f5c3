"""A tiny Lightning run through ``transferkit.core.engine`` for the fault tests (tests/test_faults.py).

In-process: :func:`train` (a linear model with dropout on shuffled random data, so a resume
that lost the random state or the data order gives different weights).
As a script (``python -m tests.faults_tiny RUN_DIR [--epochs N] [--sleep S] [--slow-save N] [--resume]``): the
same run in its own process, for signals and ``kill -9``. ``--sleep`` slows every batch; ``--slow-save N``
makes the N-th checkpoint write stall after its temporary file is written (``RUN_DIR/saving`` appears then).
Exit status: 0 done, 130/143 interrupted (the CLI's convention), 2 other transferkit errors.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch


def make_module(loss_hook=None, sleep: float = 0.0, step_error: BaseException | None = None):
    import lightning.pytorch as pl

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                                           torch.nn.Linear(16, 3))

        def training_step(self, batch, batch_idx):
            if step_error is not None:
                raise step_error
            if sleep:
                Path(self.trainer.default_root_dir, "in_step").touch()  # the test's cue: a batch is running
                time.sleep(sleep)
            x, y = batch
            loss = torch.nn.functional.cross_entropy(self.net(x), y)
            if loss_hook is not None:
                loss = loss_hook(self, loss, batch_idx)
            self.log("train_loss", loss, on_epoch=True, on_step=False)
            return loss

        def validation_step(self, batch, _):
            x, y = batch
            self.log("val_loss", torch.nn.functional.cross_entropy(self.net(x), y))

        def configure_optimizers(self):
            opt = torch.optim.AdamW(self.parameters(), lr=0.01)
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.7)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    return Tiny()


class Slow(torch.utils.data.Dataset):
    """A dataset whose item ``bad`` kills its worker (``kill``) or hangs (``hang``)."""

    def __init__(self, ds, bad: int, how: str):
        self.ds, self.bad, self.how = ds, bad, how

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        if i == self.bad:
            import os
            import signal

            if self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(60)
        return self.ds[i]


def data(n: int = 96):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return torch.utils.data.TensorDataset(x, y)


def train(run_dir: Path, epochs: int = 3, resume: bool = False, callbacks=(), module=None, train_ds=None,
          workers: int = 0, batch_size: int = 16, **module_kw: Any):
    """One run; returns (trainer, module). ``run_dir`` is created unless resuming."""
    from transferkit.core import engine

    run_dir = Path(run_dir)
    engine.prepare_run_dir(run_dir, resume)
    engine.seed_everything(0)
    module = module or make_module(**module_kw)
    cfg = engine.TrainConfig(epochs=epochs, precision="32", device="cpu")
    trainer = engine.make_trainer(cfg, run_dir, callbacks=list(callbacks))
    ds = train_ds or data()
    engine.fit(trainer, module, engine.make_loader(ds, batch_size, True, workers=workers, seed=0),
               engine.make_loader(data(32), 32, False, workers=0), run_dir, resume)
    return trainer, module


def _slow_save(n: int, run_dir: Path) -> None:
    """Stall the n-th checkpoint write after its temporary file is complete (for kill -9 tests)."""
    import os

    real = os.fsync
    count = {"n": 0}

    def fsync(fd):
        real(fd)
        name = os.readlink(f"/proc/self/fd/{fd}")
        if name.endswith(".tmp") and ".last.ckpt." in name:
            count["n"] += 1
            if count["n"] == n:
                (run_dir / "saving").write_text(name)
                time.sleep(120)

    os.fsync = fsync  # this process only: modeldir.atomic_write_bytes calls os.fsync


def main() -> int:
    from transferkit.errors import RunInterrupted, TransferkitError

    p = argparse.ArgumentParser()
    p.add_argument("run_dir", type=Path)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--slow-save", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(1)
    if a.slow_save:
        _slow_save(a.slow_save, a.run_dir)
    try:
        train(a.run_dir, a.epochs, a.resume, sleep=a.sleep)
    except RunInterrupted as err:
        print(err.describe("resume continues"), file=sys.stderr)
        return err.exit_status
    except TransferkitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("done", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
