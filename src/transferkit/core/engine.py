"""Lightning glue shared by every task: one Trainer factory, seeding, run folders, resume, best weights.

Every training loop in transferkit is a ``LightningModule`` run by the Trainer
that :func:`make_trainer` builds, so every task gets the same behaviour:

* devices chosen automatically (``--device``), DDP with ``--ddp`` (and
  ``--num-nodes`` for several machines);
* precision: bf16 mixed on GPUs and on CPUs with native bf16, fp32 elsewhere
  (bf16 emulated on other CPUs is several times *slower*);
* ``checkpoints/last.ckpt`` every epoch and ``checkpoints/best.ckpt`` on the
  monitored metric, written atomically by Lightning (fsspec transaction);
* early stopping (``--patience``), then :func:`restore_best` loads the best weights;
* ``metrics.csv`` in the run folder (CSVLogger), learning rates logged;
* a progress bar on a terminal, one line per epoch in logs (CI).

A run folder is never silently reused: :func:`prepare_run_dir` refuses a
folder that holds a run unless ``--resume`` is given, so a good checkpoint is
never overwritten by accident.
"""

from __future__ import annotations

import csv
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Literal, Optional

from dataclasses import dataclass

from transferkit.core.config import doc
from transferkit.errors import TransferkitError

CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"
BEST = "best"


@dataclass
class TrainConfig:
    """Options every training task shares (tasks subclass this and change defaults)."""

    epochs: int = doc("maximum number of training epochs", 10)
    batch_size: int = doc("samples per batch", 32)
    lr: float = doc("learning rate", 1e-3)
    seed: int = doc("random seed (data split, initialisation, augmentation)", 0)
    patience: Optional[int] = doc("early stopping: epochs without validation improvement (None: off)", None)
    device: Literal["auto", "cpu", "gpu"] = doc("where to train: auto picks a GPU when there is one", "auto")
    devices: str = doc("how many devices (or 'auto'); with --ddp, GPUs per machine", "auto")
    ddp: bool = doc("data-parallel training across devices (DistributedDataParallel)", False)
    num_nodes: int = doc("machines for multi-node DDP", 1)
    precision: Literal["auto", "32", "bf16", "16"] = doc("numeric precision; auto = bf16 where the hardware is fast at it", "auto")
    workers: Optional[int] = doc("DataLoader worker processes (None: automatic)", None)


def quiet_lightning() -> None:
    """Keep Lightning's banners and advice out of the user's terminal (errors still show)."""
    for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*The number of training batches.*")
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=r".*treespec.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"lightning.*")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (and DataLoader workers) for a reproducible run."""
    import lightning.pytorch as pl

    quiet_lightning()
    pl.seed_everything(seed, workers=True, verbose=False)


def choose_precision(requested: str, device: str = "auto") -> str:
    """Lightning precision string for the request and the hardware."""
    import torch

    from transferkit.core.inference import cpu_supports_bf16

    table = {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}
    if requested != "auto":
        return table[requested]
    on_gpu = device != "cpu" and torch.cuda.is_available()
    if on_gpu:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_supports_bf16() else "32-true"


def default_workers(n_samples: int, in_memory: bool = False) -> int:
    """DataLoader workers: none for in-memory or tiny sets (start-up costs more), else up to 4."""
    if in_memory or n_samples < 256:
        return 0
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def make_loader(dataset: Any, batch_size: int, shuffle: bool, workers: int | None = None, in_memory: bool = False,
                drop_last: bool = False, seed: int = 0, **kw: Any):
    """A DataLoader with sensible worker settings (persistent workers, pinned memory on GPU)."""
    import torch

    n = default_workers(len(dataset), in_memory) if workers is None else workers
    gen = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=n,
        persistent_workers=n > 0,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        generator=gen,
        **kw,
    )


# --------------------------------------------------------------------------- run folders


def prepare_run_dir(run_dir: str | os.PathLike, resume: bool) -> Path:
    """Create the run folder, or check it can be resumed.

    Raises:
        TransferkitError: the folder already holds a run and ``resume`` is off
            (nothing is overwritten), or ``resume`` is on and there is nothing
            to resume.
    """
    run_dir = Path(run_dir)
    last = run_dir / CHECKPOINT_DIR / LAST
    if resume:
        if not last.is_file():
            raise TransferkitError(f"Nothing to resume in {run_dir}: no {CHECKPOINT_DIR}/{LAST}.")
        return run_dir
    if run_dir.exists() and not run_dir.is_dir():
        raise TransferkitError(f"{run_dir} is a file; choose a folder for --out.")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        raise TransferkitError(
            f"{run_dir} already holds files; use --resume to continue that run, or choose a new --out folder."
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


# --------------------------------------------------------------------------- callbacks


def _fmt(v: Any) -> str:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return str(v)
    return f"{v:.4g}"


def _callbacks_module():
    import lightning.pytorch as pl

    class EpochLines(pl.Callback):
        """One line per epoch with the logged metrics (used when stderr is not a terminal)."""

        def __init__(self, prefix: str = ""):
            self.prefix = prefix

        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.sanity_checking or trainer.global_rank != 0:
                return
            metrics = {k: v for k, v in trainer.callback_metrics.items() if not k.endswith("_step")}
            # one learning rate per parameter group (metrics.csv keeps them all) -> lr=lo..hi
            lrs = sorted(float(v) for k, v in metrics.items() if k.startswith("lr-"))
            metrics = {k: v for k, v in metrics.items() if not k.startswith("lr-")}
            if lrs and "lr" not in metrics:
                metrics["lr"] = _fmt(lrs[0]) if lrs[0] == lrs[-1] else f"{_fmt(lrs[0])}..{_fmt(lrs[-1])}"
            parts = " ".join(f"{k.removesuffix('_epoch')}={_fmt(v)}" for k, v in sorted(metrics.items()))
            print(f"{self.prefix}epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: {parts}", file=sys.stderr, flush=True)

    class EpochTimer(pl.Callback):
        """Logs ``epoch_time`` (seconds of training + validation) into metrics.csv."""

        def on_train_epoch_start(self, trainer, pl_module):
            self._t = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            if hasattr(self, "_t"):
                pl_module.log("epoch_time", time.perf_counter() - self._t, on_epoch=True, sync_dist=False)

    return EpochLines, EpochTimer


def csv_logger(run_dir: str | os.PathLike):
    """Lightning's CSVLogger writing ``run_dir/metrics.csv``, continuing the file when a run resumes.

    Lightning's own writer deletes an existing metrics.csv; a resumed run would
    then lose the curves of its first epochs. It also rewrites the whole file in
    place when a new metric appears (a new header): a run killed during that
    rewrite lost every row written so far. Here the rewrite is atomic.
    """
    import io

    from lightning.fabric.loggers.logger import rank_zero_experiment
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    from transferkit.core.modeldir import atomic_write_text

    class AppendingWriter(ExperimentWriter):
        def _check_log_dir_exists(self) -> None:
            if os.path.isfile(self.metrics_file_path):
                with open(self.metrics_file_path, newline="") as f:
                    self.metrics_keys = sorted(next(csv.reader(f), []))

        def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
            with open(self.metrics_file_path, newline="") as f:
                rows = list(csv.DictReader(f))
            buf = io.StringIO(newline="")
            writer = csv.DictWriter(buf, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)
            atomic_write_text(self.metrics_file_path, buf.getvalue())

    class Logger(CSVLogger):
        @property
        @rank_zero_experiment
        def experiment(self):
            if self._experiment is None:
                os.makedirs(self.root_dir, exist_ok=True)
                self._experiment = AppendingWriter(log_dir=self.log_dir)
            return self._experiment

    return Logger(str(run_dir), name="", version="")


def make_trainer(
    cfg: TrainConfig,
    run_dir: str | os.PathLike,
    monitor: str | None = "val_loss",
    mode: str = "min",
    callbacks: Iterable[Any] = (),
    max_epochs: int | None = None,
    log_prefix: str = "",
    **trainer_kwargs: Any,
):
    """The Lightning Trainer every task uses (see the module docstring for what it brings)."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar

    from transferkit.core.progress import progress_mode

    quiet_lightning()
    run_dir = Path(run_dir)
    EpochLines, EpochTimer = _callbacks_module()
    cbs: list[Any] = list(callbacks)
    cbs.append(
        ModelCheckpoint(
            dirpath=run_dir / CHECKPOINT_DIR,
            filename=BEST,
            monitor=monitor,
            mode=mode,
            save_top_k=1 if monitor else 0,
            save_last=True,
            enable_version_counter=False,
        )
    )
    if monitor and cfg.patience is not None:
        cbs.append(EarlyStopping(monitor=monitor, mode=mode, patience=cfg.patience))
    cbs.append(LearningRateMonitor(logging_interval="epoch"))
    cbs.append(EpochTimer())
    mode_ = progress_mode()
    if mode_ == "bar":
        cbs.append(TQDMProgressBar(leave=False))
    elif mode_ == "lines":
        cbs.append(EpochLines(log_prefix))
    accelerator = {"auto": "auto", "cpu": "cpu", "gpu": "gpu"}[cfg.device]
    devices: Any = cfg.devices if cfg.devices == "auto" else int(cfg.devices)
    if accelerator == "cpu" and devices == "auto" and not cfg.ddp:
        devices = 1
    if accelerator == "auto" and not cfg.ddp and devices == "auto":
        devices = 1  # one device unless DDP is asked for; Lightning would otherwise take all GPUs
    kwargs = dict(
        accelerator=accelerator,
        devices=devices,
        num_nodes=cfg.num_nodes,
        strategy="ddp" if cfg.ddp else "auto",
        precision=choose_precision(cfg.precision, cfg.device),
        max_epochs=max_epochs if max_epochs is not None else cfg.epochs,
        logger=csv_logger(run_dir),
        callbacks=cbs,
        enable_progress_bar=mode_ == "bar",
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=10,
        default_root_dir=str(run_dir),
    )
    kwargs.update(trainer_kwargs)
    return pl.Trainer(**kwargs)


def fit(trainer: Any, module: Any, train_loader: Any, val_loader: Any = None, run_dir: str | os.PathLike | None = None,
        resume: bool = False) -> None:
    """``trainer.fit``, resuming from ``run_dir/checkpoints/last.ckpt`` when ``resume`` is set."""
    ckpt = None
    if resume:
        if run_dir is None:
            raise ValueError("resume needs run_dir")
        ckpt = str(Path(run_dir) / CHECKPOINT_DIR / LAST)
    # weights_only=True: resuming reads tensors and plain values only, never code from the file
    trainer.fit(module, train_loader, val_loader, ckpt_path=ckpt, weights_only=True if ckpt else None)


def restore_best(trainer: Any, module: Any) -> str | None:
    """Load the best checkpoint's weights (early stopping's "restore best weights"); returns its path."""
    import torch

    cb = getattr(trainer, "checkpoint_callback", None)
    path = getattr(cb, "best_model_path", "") if cb is not None else ""
    if not path or not Path(path).is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state)
    return path


def metrics_by_epoch(run_dir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """Read ``metrics.csv``: for each metric, its (epoch, value) pairs, last value per epoch."""
    path = Path(run_dir) / "metrics.csv"
    out: dict[str, dict[int, float]] = {}
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            try:
                epoch = int(float(row.get("epoch") or 0))
            except ValueError:
                continue
            for k, v in row.items():
                if k in ("epoch", "step") or v in ("", None):
                    continue
                try:
                    out.setdefault(k, {})[epoch] = float(v)
                except ValueError:
                    pass
    return {k: sorted(v.items()) for k, v in out.items()}
