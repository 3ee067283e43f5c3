"""Lightning glue shared by every task: one Trainer factory, seeding, run folders, resume, best weights.

Every training loop in transferkit is a ``LightningModule`` run by the Trainer
that :func:`make_trainer` builds, so every task gets the same behaviour:

* devices chosen automatically (``--device``), DDP with ``--ddp`` (and
  ``--num-nodes`` for several machines);
* precision: ``auto`` is bf16 mixed on GPUs that have it (else fp16 mixed); on
  CPUs it follows the measurement (``benchmarks/cpu_precision.py``,
  BENCHMARKS.md): fp32, except bf16 mixed for the tasks measured faster at
  equal accuracy on CPUs with native bf16 (a config's ``CPU_BF16_MEASURED``).
  ``TRANSFERKIT_PRECISION`` (``32`` or ``bf16``) changes what ``auto`` means, for tests and for users who
  measured otherwise; an explicit ``--precision`` always wins;
* ``checkpoints/last.ckpt`` every epoch and ``checkpoints/best.ckpt`` on the
  monitored metric, written atomically by Lightning (fsspec transaction);
* early stopping (``--patience``), then :func:`restore_best` loads the best weights;
* ``metrics.csv`` in the run folder (CSVLogger), learning rates logged;
* a progress bar on a terminal, one line per epoch in logs (CI).

A run folder is never silently reused: :func:`prepare_run_dir` refuses a
folder that holds a run unless ``--resume`` is given, so a good checkpoint is
never overwritten by accident.

Faults every task gets handled here (FAULTS.md lists them with their tests):

* Ctrl-C (SIGINT) or SIGTERM during :func:`fit` stops at the next batch
  boundary and raises :class:`~transferkit.errors.RunInterrupted` (the CLI
  prints one line naming the checkpoint kept and the ``--resume`` command, exit
  130 / 143); a second signal exits at once;
* a NaN/Inf loss skips that optimiser step; several in a row, or a finite loss
  exploding to 1000x the first batch's, stop the run with
  :class:`~transferkit.errors.TrainingDiverged` (the diverged model is never
  saved; the checkpoints written before stay);
* checkpoints are written beside their final name and renamed (never
  half-written, even across file systems); a resume ignores stale temporaries
  and falls back to ``best.ckpt`` when ``last.ckpt`` is damaged;
* out of memory, a dead DataLoader worker and a full disk become one line.
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
from transferkit.errors import RunInterrupted, TrainingDiverged, TransferkitError

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
    devices: str = doc("how many devices (or 'auto'); with --ddp, processes per machine: one per GPU, or CPU "
                       "processes (gloo)", "auto")
    ddp: bool = doc("data-parallel training across devices (DistributedDataParallel; under torchrun or srun it is "
                    "on by itself)", False)
    num_nodes: int = doc("machines for multi-node DDP", 1)
    precision: Literal["auto", "32", "bf16", "16"] = doc(
        "numeric precision; auto = bf16 on GPUs that have it, fp32 on CPUs (measured), or $TRANSFERKIT_PRECISION", "auto")
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


# What ``--precision auto`` trains in on a CPU.  Measured by benchmarks/cpu_precision.py at equal
# steps (BENCHMARKS.md, "CPU training precision") on an AVX-512 CPU with native bf16 (AMD EPYC,
# avx512_bf16, no AMX): classify finetune and the conv autoencoder were not faster in bf16 (CPU time
# 0.96x, 1.03x), the Siamese small CNN was (0.84x CPU time, same one-shot accuracy), seq2seq too (0.79x)
# but at a length where its accuracy says nothing yet.  So: fp32, except tasks whose config sets
# CPU_BF16_MEASURED = True, and only on CPUs with native bf16 (emulated bf16 is slower).
# Change either only with a new measurement.
CPU_AUTO_PRECISION = "32"
PRECISION_ENV = "TRANSFERKIT_PRECISION"
PRECISIONS = {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}


def auto_precision_override() -> str | None:
    """``$TRANSFERKIT_PRECISION`` (32, bf16 or 16) when set: what ``auto`` resolves to."""
    value = os.environ.get(PRECISION_ENV, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in PRECISIONS:
        raise TransferkitError(f"{PRECISION_ENV}={value!r} is not a precision; use one of 32, bf16, 16 or auto.")
    return value


def choose_precision(requested: str, device: str = "auto", cpu_bf16_measured: bool = False) -> str:
    """Lightning precision string for the request and the hardware.

    An explicit request wins; ``auto`` is ``$TRANSFERKIT_PRECISION`` when set, else bf16 mixed on a
    GPU with bf16 (fp16 mixed on older GPUs), and on a CPU :data:`CPU_AUTO_PRECISION`, or bf16 mixed
    when the task was measured faster in it (``cpu_bf16_measured``) and the CPU has native bf16.
    bf16 can be asked for on any CPU: oneDNN emulates it where the CPU has no native bf16 (slowly).
    """
    import torch

    if requested == "auto":
        requested = auto_precision_override() or "auto"
    if requested != "auto":
        if requested not in PRECISIONS:
            raise TransferkitError(f"--precision {requested!r} is not one of auto, 32, bf16, 16.")
        return PRECISIONS[requested]
    on_gpu = device != "cpu" and torch.cuda.is_available()
    if on_gpu:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    if cpu_bf16_measured:
        from transferkit.core.inference import cpu_supports_bf16

        if cpu_supports_bf16():
            return "bf16-mixed"
    return PRECISIONS[CPU_AUTO_PRECISION]


LOADER_TIMEOUT = 600.0  # seconds a DataLoader worker may take for one batch (env TRANSFERKIT_LOADER_TIMEOUT)


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
    if shuffle and "sampler" not in kw and "batch_sampler" not in kw:
        kw["sampler"] = _epoch_shuffle()(len(dataset), seed)
        shuffle = False
    if n > 0:
        if "worker_init_fn" not in kw:
            import functools
            import multiprocessing

            # one slot per worker: the index it is loading now (-1 between items), shared with this process so
            # that a worker killed or stuck in an item can be named with that item (see loader_culprit)
            slots = multiprocessing.Array("q", [-1] * n, lock=False)
            kw["worker_init_fn"] = functools.partial(_worker_init, slots=slots)
        # a worker that hangs (a stuck network file system, a deadlock in a decoder) becomes an error, not a hang
        kw.setdefault("timeout", float(os.environ.get("TRANSFERKIT_LOADER_TIMEOUT", LOADER_TIMEOUT)))
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


_EPOCH_SHUFFLE = None


def _epoch_shuffle():
    """A sampler whose order is a function of (seed, epoch) only: Lightning calls ``set_epoch`` before each
    epoch, so a resumed run sees exactly the orders an uninterrupted one would (a shared generator would
    depend on how often Lightning created iterators before)."""
    global _EPOCH_SHUFFLE
    if _EPOCH_SHUFFLE is None:
        import torch

        class EpochShuffle(torch.utils.data.Sampler):
            def __init__(self, n: int, seed: int = 0):
                self.n, self.seed, self.epoch = int(n), int(seed), 0

            def set_epoch(self, epoch: int) -> None:
                self.epoch = int(epoch)

            def __iter__(self):
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
                return iter(torch.randperm(self.n, generator=g).tolist())

            def __len__(self) -> int:
                return self.n

        _EPOCH_SHUFFLE = EpochShuffle
    return _EPOCH_SHUFFLE


def _worker_init(worker_id: int, slots: Any = None) -> None:
    """DataLoader workers ignore Ctrl-C (the terminal sends it to the whole process group): the main
    process stops at the next batch boundary, and a worker that died on its own would hide that.
    Each worker also notes in ``slots[worker_id]`` which item it is loading (see :func:`loader_culprit`)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if slots is not None:
        _track_items(worker_id, slots)
    if int(os.environ.get("PL_SEED_WORKERS", 0)):  # what Lightning adds when we give no worker_init_fn
        from lightning.fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id)


def _track_items(worker_id: int, slots: Any) -> None:
    """In a DataLoader worker: make this worker's copy of the dataset write the index it is loading into
    ``slots[worker_id]`` (-1 once the item is done). Only the worker's own copy changes class; the
    dataset in the training process is untouched."""
    import torch

    info = torch.utils.data.get_worker_info()
    ds = info.dataset if info is not None else None
    base = type(ds)
    if ds is None or not hasattr(base, "__getitem__"):
        return

    def getitem(self, i):
        slots[worker_id] = int(i) if isinstance(i, int) else -1
        item = base.__getitem__(self, i)
        slots[worker_id] = -1
        return item

    def getitems(self, indices):  # torch's batched fetch (Subset has it): the batch's first item is named
        slots[worker_id] = int(indices[0]) if len(indices) else -1
        items = base.__getitems__(self, indices)
        slots[worker_id] = -1
        return items

    methods = {"__getitem__": getitem}
    if callable(getattr(base, "__getitems__", None)):
        methods["__getitems__"] = getitems
    try:
        ds.__class__ = type(base.__name__, (base,), methods)
    except TypeError:  # a class whose layout forbids it (C extension types): no naming, loading unchanged
        pass


def loader_culprit(loader: Any) -> str:
    """Which item a failed DataLoader's workers were loading ("item 40 (cat_17.jpg)"), or "" when unknown."""
    init = getattr(loader, "worker_init_fn", None)
    slots = getattr(init, "keywords", {}).get("slots") if init is not None else None
    if slots is None:
        return ""
    busy = [(w, int(i)) for w, i in enumerate(slots) if i >= 0]
    if not busy:
        return ""
    ds = getattr(loader, "dataset", None)
    names = next((getattr(ds, a) for a in ("paths", "files", "names") if isinstance(getattr(ds, a, None), (list, tuple))), None)
    parts = []
    for w, i in busy:
        name = f" ({Path(str(names[i])).name})" if names is not None and 0 <= i < len(names) else ""
        parts.append(f"worker {w} on item {i}{name}")
    return ", ".join(parts)


# --------------------------------------------------------------------------- run folders


def process_rank() -> int:
    """This process's global rank under a DDP launcher, 0 when not distributed.

    Lightning's own launcher (``--devices N --ddp``) re-runs the command for ranks 1..N-1 with
    ``LOCAL_RANK``/``NODE_RANK`` set; ``torchrun`` sets ``RANK``; SLURM's ``srun`` sets ``SLURM_PROCID``.
    Only rank 0 creates, checks and writes the run folder; the others read what it wrote.
    """
    for key in ("RANK", "SLURM_PROCID"):
        value = os.environ.get(key, "")
        if value.isdigit():
            return int(value)
    if any(os.environ.get(k, "0") not in ("", "0") for k in ("LOCAL_RANK", "NODE_RANK")):
        return max(1, int(os.environ.get("LOCAL_RANK", "0") or 0))
    return 0


def is_rank_zero() -> bool:
    """True in the process that owns the run folder (always, without DDP)."""
    return process_rank() == 0


def launcher_layout() -> tuple[int, int] | None:
    """(processes per machine, machines) when an outside launcher started this process as part of a
    multi-process job, else None.

    ``torchrun`` sets ``WORLD_SIZE``/``LOCAL_WORLD_SIZE`` (and ``TORCHELASTIC_RUN_ID``); SLURM's ``srun``
    sets ``SLURM_STEP_NUM_TASKS``/``SLURM_STEP_NUM_NODES`` for the processes of its step (a batch script or
    an interactive shell inside an allocation is not a launch: there only ``SLURM_NTASKS`` is set).
    Lightning then reads ranks and the rendezvous from the same variables and spawns nothing itself, so
    ``--devices``/``--num-nodes``/``--ddp`` need not be repeated (and cannot contradict the launcher).
    """
    env = os.environ
    if "TORCHELASTIC_RUN_ID" in env and env.get("WORLD_SIZE", "").isdigit():
        world = int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_WORLD_SIZE", world) or world)
        return (local, max(1, world // max(1, local))) if world > 1 else None
    if env.get("SLURM_STEP_NUM_TASKS", "").isdigit() and env.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        tasks, nodes = int(env["SLURM_STEP_NUM_TASKS"]), int(env.get("SLURM_STEP_NUM_NODES", "1") or 1)
        return (max(1, tasks // max(1, nodes)), nodes) if tasks > 1 else None
    return None


def _wait_for_rank_zero(run_dir: Path, timeout_s: float = 600.0) -> None:
    """Ranks 1..N-1: wait until rank 0 has created the run folder (torchrun starts all ranks at once)."""
    deadline = time.monotonic() + timeout_s
    while not (run_dir / "config.yaml").is_file():
        if time.monotonic() > deadline:
            raise TransferkitError(f"rank {process_rank()}: rank 0 did not create {run_dir} within {timeout_s:.0f} s.")
        time.sleep(0.2)


def check_writable(out: str | os.PathLike, what: str = "--out") -> None:
    """Check that ``out`` (a file or folder to be written) can be created, without creating anything.

    The nearest existing ancestor must be a folder in which a file can be
    created.  Raises :class:`TransferkitError` with one sentence otherwise.
    """
    import tempfile

    path = Path(out).expanduser()
    probe = path if path.is_dir() else path.parent
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise TransferkitError(f"{what} {out} cannot be created: {probe} is a file, not a folder.")
    try:
        with tempfile.TemporaryFile(dir=probe, prefix=".transferkit-probe-"):
            pass
    except OSError as err:
        raise TransferkitError(f"{what} {out} cannot be written: {err.strerror or err} in {probe}.") from None


LOCK_FILE = ".transferkit.lock"


def lock_run_dir(run_dir: str | os.PathLike) -> int | None:
    """Take the run folder's lock (``flock`` on ``RUN/.transferkit.lock``, released by :func:`unlock_run_dir`
    or when the process ends, even by ``kill -9``); returns its descriptor, None where flock is missing.

    Raises:
        TransferkitError: another process holds it (it is training into this folder).
    """
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        return None
    if not is_rank_zero():
        return None  # a DDP worker process: the launching process (rank 0) holds the lock
    path = Path(run_dir) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        other = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise TransferkitError(
            f"Another transferkit process{f' (pid {other})' if other.isdigit() else ''} is training into {run_dir}; "
            "wait for it to finish or stop it, or choose another --out."
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def unlock_run_dir(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the flock


def prepare_run_dir(run_dir: str | os.PathLike, resume: bool) -> Path:
    """Create the run folder, or check it can be resumed.

    Raises:
        TransferkitError: the folder already holds a run and ``resume`` is off
            (nothing is overwritten), or ``resume`` is on and there is nothing
            to resume.
    """
    run_dir = Path(run_dir)
    last = run_dir / CHECKPOINT_DIR / LAST
    if not is_rank_zero():  # DDP: rank 0 made (or checked) the folder; the guard is its job alone
        _wait_for_rank_zero(run_dir)
        return run_dir
    if resume:
        if not last.is_file():
            raise TransferkitError(f"Nothing to resume in {run_dir}: no {CHECKPOINT_DIR}/{LAST}.")
        unlock_run_dir(lock_run_dir(run_dir))  # refuses while another process trains into it
        return run_dir
    if run_dir.exists() and not run_dir.is_dir():
        raise TransferkitError(f"{run_dir} is a file; choose a folder for --out.")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        raise TransferkitError(
            f"{run_dir} already holds files; use --resume to continue that run, or choose a new --out folder."
        )
    check_writable(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        # claim the empty folder atomically: of two new runs started in the same instant, the second finds
        # the lock file the first created and refuses, instead of both passing the emptiness check above
        os.close(os.open(run_dir / LOCK_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        raise TransferkitError(
            f"{run_dir} already holds files; use --resume to continue that run, or choose a new --out folder."
        ) from None
    except OSError as err:
        raise TransferkitError(f"--out {run_dir} cannot be created: {err.strerror or err}.") from None
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


# --------------------------------------------------------------------------- faults: signals, divergence, checkpoints

NAN_LIMIT = 3  # non-finite losses in a row that stop a run (each one's step is skipped)
EXPLODE_FACTOR = 1000.0  # a loss this many times the first batch's counts as exploding...
EXPLODE_LIMIT = 3  # ...and this many in a row stop the run
_DIVERGENCE_ENV = "TRANSFERKIT_DIVERGENCE_FACTOR"  # "off" or a factor: for losses that legitimately grow


class _Stop(Exception):
    """Raised by the guard inside ``trainer.fit`` (an Exception: Lightning turns KeyboardInterrupt into exit 1)."""

    def __init__(self, kind: str, message: str = "", epoch: int = 0):
        super().__init__(message or kind)
        self.kind, self.message, self.epoch = kind, message, epoch


class _Signals:
    """SIGINT/SIGTERM handlers for the duration of one ``fit``: the first signal asks for a stop at the next
    batch boundary, a second one exits at once."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._old: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:
        import signal

        name = signal.Signals(signum).name
        if self.received is not None:
            print(f"\n{name} again: stopping now, without a new checkpoint", file=sys.stderr, flush=True)
            os._exit(143 if name == "SIGTERM" else 130)
        self.received = name
        print(f"\n{name}: stopping after this batch (press Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def __enter__(self) -> "_Signals":
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        self._old = {}


def _divergence_factor() -> float | None:
    v = os.environ.get(_DIVERGENCE_ENV, "").strip().lower()
    if v in ("off", "none", "0"):
        return None
    try:
        return float(v) if v else EXPLODE_FACTOR
    except ValueError:
        raise TransferkitError(f"{_DIVERGENCE_ENV} must be 'off' or a number, not {v!r}.") from None


_GUARD_CLASSES: tuple | None = None


def _guard_classes():
    """(FaultGuard, AtomicCheckpointIO), defined on first use so that importing this module stays light."""
    global _GUARD_CLASSES
    if _GUARD_CLASSES is not None:
        return _GUARD_CLASSES
    import math

    import lightning.pytorch as pl
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    class FaultGuard(pl.Callback):
        """Stops at a batch boundary on a signal; skips NaN/Inf steps; stops a diverging run.

        The losses of each batch are read in ``on_before_backward`` (so manual optimisation is
        covered too); the first batch's loss is the reference scale, kept in checkpoints so a
        resumed run compares against the same value.
        """

        def __init__(self, signals: _Signals | None = None, factor: float | None = EXPLODE_FACTOR,
                     nan_limit: int = NAN_LIMIT, explode_limit: int = EXPLODE_LIMIT):
            self.signals = signals
            self.factor = factor
            self.nan_limit = nan_limit
            self.explode_limit = explode_limit
            self.reference: float | None = None
            self._losses: list[float] = []
            self._nan_run = 0
            self._explode_run = 0
            self.skipped = 0

        def state_dict(self) -> dict[str, Any]:
            return {"reference": self.reference}

        def load_state_dict(self, state: dict[str, Any]) -> None:
            self.reference = state.get("reference")

        # Random state: Lightning's checkpoints hold none, so a resumed run would shuffle, augment and
        # drop out differently from an uninterrupted one. Saved with every checkpoint (plain tensors and
        # lists, readable with weights_only=True), put back when training starts again.
        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            checkpoint[RNG_KEY] = _rng_state(trainer)

        def on_load_checkpoint(self, trainer, pl_module, checkpoint):
            self._rng_to_restore = checkpoint.get(RNG_KEY)

        def on_train_epoch_start(self, trainer, pl_module):
            # not on_train_start: resuming from an end-of-epoch checkpoint, Lightning iterates the finished
            # epoch's loader once more (drawing from its generator) before the next epoch starts
            state, self._rng_to_restore = getattr(self, "_rng_to_restore", None), None
            if state:
                _set_rng_state(trainer, state)

        # With several processes (DDP) every decision is taken together, once per batch (any process's NaN
        # skips the step everywhere, any process's stop stops all), so no process waits forever for the others.
        @staticmethod
        def _together(trainer, decision: bool) -> bool:
            if getattr(trainer, "world_size", 1) > 1:
                return bool(trainer.strategy.reduce_boolean_decision(decision, all=False))
            return decision

        def _check_signal(self, trainer, collective: bool = False) -> None:
            received = self.signals is not None and self.signals.received
            if getattr(trainer, "world_size", 1) > 1 and not collective:
                return  # only at the collective point (the end of a training batch)
            if self._together(trainer, bool(received)) if collective else received:
                raise _Stop("signal", (self.signals.received if received else None) or "SIGINT",
                            trainer.current_epoch + 1)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self._losses = []
            self._check_signal(trainer)

        def on_before_backward(self, trainer, pl_module, loss):
            try:
                self._losses.append(float(loss.detach().float()))
            except (TypeError, ValueError, RuntimeError):
                pass

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            if self._together(trainer, any(not math.isfinite(v) for v in self._losses)):
                for group in optimizer.param_groups:  # no gradient: the optimiser leaves the weights alone
                    for p in group["params"]:
                        p.grad = None

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses, self._losses = self._losses, []
            where = f"epoch {trainer.current_epoch + 1}, batch {batch_idx + 1}"
            stop: str | None = None
            if losses:
                if any(not math.isfinite(v) for v in losses):
                    self._nan_run += 1
                    self.skipped += 1
                    bad = next(v for v in losses if not math.isfinite(v))
                    if self._nan_run == 1:
                        print(f"warning: the loss is {bad} in {where}; that step is skipped", file=sys.stderr, flush=True)
                    if self._nan_run >= self.nan_limit:
                        stop = f"the loss was {bad} for {self._nan_run} batches in a row (up to {where})"
                else:
                    self._nan_run = 0
                    v = max(abs(x) for x in losses)
                    if self.reference is None:
                        self.reference = v
                    limit = self.factor * max(self.reference, 1e-3) if self.factor else math.inf
                    if v > limit:
                        self._explode_run += 1
                        if self._explode_run == 1:
                            print(f"warning: the loss is {v:.3g} in {where}, over {self.factor:g}x the first batch's "
                                  f"{self.reference:.3g}: training is diverging", file=sys.stderr, flush=True)
                        if self._explode_run >= self.explode_limit:
                            stop = (f"the loss exploded to {v:.3g}, over {self.factor:g}x the first batch's "
                                    f"{self.reference:.3g}, for {self._explode_run} batches in a row (up to {where})")
                    else:
                        self._explode_run = 0
            if self._together(trainer, stop is not None):
                raise _Stop("diverged", stop or f"another process's loss diverged (up to {where})",
                            trainer.current_epoch + 1)
            self._check_signal(trainer, collective=True)

        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            if not trainer.sanity_checking:
                self._check_signal(trainer)

    class AtomicCheckpointIO(TorchCheckpointIO):
        """Checkpoints written to a temporary file beside the final name, fsynced, then renamed.

        Lightning's own writer stages the file in the system temp folder and *moves* it, which is a
        copy (and can leave half a checkpoint behind) when that folder is on another file system.
        """

        def save_checkpoint(self, checkpoint, path, storage_options=None):
            import io

            import torch

            from transferkit.core.modeldir import atomic_write_bytes

            buf = io.BytesIO()
            torch.save(checkpoint, buf)
            atomic_write_bytes(path, buf.getbuffer())

    _GUARD_CLASSES = (FaultGuard, AtomicCheckpointIO)
    return _GUARD_CLASSES


RNG_KEY = "transferkit_rng"


def _rng_state(trainer: Any) -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) random states (data order: see :func:`_epoch_shuffle`)."""
    import random

    import numpy as np
    import torch

    version, keys, gauss = random.getstate()
    kind, arr, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(keys), gauss],
        "numpy": [kind, torch.from_numpy(np.asarray(arr, dtype=np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(trainer: Any, state: dict[str, Any]) -> None:
    import random

    import numpy as np
    import torch

    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    kind, arr, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, arr.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _loadable(path: Path) -> str | None:
    """None when ``path`` is a readable checkpoint, else a short reason."""
    import torch

    if not path.is_file():
        return "missing"
    if path.stat().st_size == 0:
        return "empty (0 bytes)"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # truncated zip, foreign pickle, ...
        return str(err).splitlines()[0][:160] or type(err).__name__
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        return "not a training checkpoint"
    return None


def clean_stale_temporaries(run_dir: str | os.PathLike) -> list[Path]:
    """Remove temporaries a killed process left in ``run_dir/checkpoints`` (``.NAME.XXXX.tmp``)."""
    removed = []
    ckdir = Path(run_dir) / CHECKPOINT_DIR
    if ckdir.is_dir():
        for f in ckdir.glob(".*.tmp"):
            try:
                f.unlink()
                removed.append(f)
            except OSError:
                pass
    return removed


def resume_checkpoint(run_dir: str | os.PathLike) -> str:
    """The checkpoint to resume ``run_dir`` from: ``last.ckpt``, or ``best.ckpt`` when the last is damaged."""
    ckdir = Path(run_dir) / CHECKPOINT_DIR
    clean_stale_temporaries(run_dir)
    last = ckdir / LAST
    why = _loadable(last)
    if why is None:
        return str(last)
    best = ckdir / f"{BEST}.ckpt"
    if _loadable(best) is None:
        print(f"warning: {last} cannot be read ({why}); resuming from {best} instead", file=sys.stderr, flush=True)
        return str(best)
    raise TransferkitError(f"Cannot resume {run_dir}: {last} cannot be read ({why}) and there is no other good checkpoint.")


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
    partial_backward: bool = False,
    **trainer_kwargs: Any,
):
    """The Lightning Trainer every task uses (see the module docstring for what it brings).

    ``partial_backward``: each backward pass reaches only part of the module's parameters (a GAN's two
    optimisers, stepped in turn): under DDP the gradient reducer must then look for unused parameters."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar

    from transferkit.core.progress import progress_mode

    quiet_lightning()
    run_dir = Path(run_dir)
    EpochLines, EpochTimer = _callbacks_module()
    cbs: list[Any] = list(callbacks)
    FaultGuard, AtomicCheckpointIO = _guard_classes()
    cbs.append(FaultGuard(factor=_divergence_factor()))
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
    ddp, num_nodes = cfg.ddp, cfg.num_nodes
    layout = launcher_layout()
    if layout is not None:  # torchrun / srun started every process: the launcher's layout, never our own spawn
        ddp, (devices, num_nodes) = True, layout
    if accelerator == "cpu" and devices == "auto" and not ddp:
        devices = 1
    if accelerator == "auto" and not ddp and devices == "auto":
        devices = 1  # one device unless DDP is asked for; Lightning would otherwise take all GPUs
    kwargs = dict(
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=("ddp_find_unused_parameters_true" if partial_backward else "ddp") if ddp else "auto",
        precision=choose_precision(cfg.precision, cfg.device, getattr(cfg, "CPU_BF16_MEASURED", False)),
        max_epochs=max_epochs if max_epochs is not None else cfg.epochs,
        logger=csv_logger(run_dir),
        callbacks=cbs,
        enable_progress_bar=mode_ == "bar",
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=10,
        default_root_dir=str(run_dir),
    )
    plugins = list(trainer_kwargs.pop("plugins", None) or [])
    from lightning.fabric.plugins import CheckpointIO

    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    kwargs["plugins"] = plugins
    kwargs.update(trainer_kwargs)
    return pl.Trainer(**kwargs)


def fit(trainer: Any, module: Any, train_loader: Any, val_loader: Any = None, run_dir: str | os.PathLike | None = None,
        resume: bool = False) -> None:
    """``trainer.fit``, resuming from ``run_dir/checkpoints/last.ckpt`` when ``resume`` is set.

    Raises:
        RunInterrupted: SIGINT/SIGTERM arrived; stopped at a batch boundary, checkpoints kept.
        TrainingDiverged: NaN/Inf or exploding loss (see :data:`NAN_LIMIT`, :data:`EXPLODE_FACTOR`).
        TransferkitError: out of memory, a dead DataLoader worker, a full disk, a checkpoint that
            does not fit the model: one sentence each.
    """
    ckpt = None
    if run_dir is None:
        run_dir = getattr(trainer, "default_root_dir", None)
    if resume and run_dir is None:
        raise ValueError("resume needs run_dir")
    FaultGuard, _ = _guard_classes()
    guards = [cb for cb in trainer.callbacks if isinstance(cb, FaultGuard)]
    # one process at a time trains into a folder (a second --resume of the same run is refused)
    lock = lock_run_dir(run_dir) if run_dir is not None and Path(run_dir).is_dir() else None
    try:
        if resume:
            ckpt = resume_checkpoint(run_dir)
        _fit_guarded(trainer, module, train_loader, val_loader, run_dir, ckpt, guards)
    finally:
        unlock_run_dir(lock)


def _fit_guarded(trainer: Any, module: Any, train_loader: Any, val_loader: Any, run_dir: Any, ckpt: str | None,
                 guards: list[Any]) -> None:
    with _Signals() as signals:
        for g in guards:
            g.signals = signals
        try:
            # weights_only=True: resuming reads tensors and plain values only, never code from the file
            trainer.fit(module, train_loader, val_loader, ckpt_path=ckpt, weights_only=True if ckpt else None)
        except BaseException as err:
            _raise_fault(err, signals, trainer, train_loader, run_dir, ckpt)
            raise
        finally:
            for g in guards:
                g.signals = None
        if signals.received:  # arrived after the last batch: the run finished, say so but do not fail it
            print(f"{signals.received} arrived after the last batch; the run finished", file=sys.stderr, flush=True)


def _raise_fault(err: BaseException, signals: _Signals, trainer: Any, train_loader: Any, run_dir: Any,
                 ckpt: str | None) -> None:
    """Turn what stopped ``trainer.fit`` into the one-line error the user sees (returns when it is a bug)."""
    import errno

    epoch = int(getattr(trainer, "current_epoch", 0)) + 1
    ckdir = Path(run_dir) / CHECKPOINT_DIR if run_dir is not None else None
    if signals.received or isinstance(err, KeyboardInterrupt) or type(err).__name__ == "SIGTERMException":
        name = signals.received or ("SIGTERM" if type(err).__name__ == "SIGTERMException" else "SIGINT")
        last = ckdir / LAST if ckdir is not None else None
        kept = last if last is not None and last.is_file() else None
        raise RunInterrupted(name, run_dir, kept, getattr(err, "epoch", 0) or epoch) from None
    if isinstance(err, _Stop) and err.kind == "diverged":
        kept = [p.name for p in (ckdir / f"{BEST}.ckpt", ckdir / LAST) if p.is_file()] if ckdir is not None else []
        where = (f"the checkpoints written before it are kept in {ckdir} ({', '.join(kept)})" if kept
                 else "no checkpoint had been written yet")
        raise TrainingDiverged(f"Training diverged: {err.message}; the diverged model was not saved, {where}; "
                               f"try a lower --lr.") from None
    msg = str(err).splitlines()[0] if str(err) else type(err).__name__
    low = msg.lower()
    import torch

    if isinstance(err, torch.OutOfMemoryError) or (
            isinstance(err, RuntimeError) and ("out of memory" in low or "can't allocate memory" in low)):
        bs = getattr(train_loader, "batch_size", None)
        raise TransferkitError(f"Out of memory while training with batch size {bs} ({msg[:120]}); "
                               f"try a smaller --batch-size.") from None
    workers = int(getattr(train_loader, "num_workers", 0) or 0)
    if (isinstance(err, RuntimeError) and "dataloader" in low and ("worker" in low or "timed out" in low)) or (
            workers > 0 and isinstance(err, (ConnectionError, EOFError))):  # a worker killed mid-transfer
        # torch words a dead worker three ways ("is killed by signal", "exited unexpectedly", or a broken
        # pipe), depending on which of its checks sees the death first: one wording for the user.
        if not isinstance(err, RuntimeError) or "exited unexpectedly" in low or "killed by signal" in low:
            msg = f"a worker process was killed or died ({msg})"
        culprit = loader_culprit(train_loader)
        if culprit:
            msg = f"{msg}; it was loading: {culprit}"
        raise TransferkitError(f"A data-loading worker failed: {msg}; try --workers 0 to load in the main process "
                               f"and see which file fails.") from None
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        raise TransferkitError(f"Cannot write {err.filename or 'a checkpoint'}: {err.strerror}; the checkpoints "
                               f"written before are kept in {ckdir}.") from None
    if ckpt and isinstance(err, RuntimeError) and "state_dict" in low:
        raise TransferkitError(f"{ckpt} does not fit this model ({msg[:160]}); resume with the same options "
                               f"as the interrupted run.") from None


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
