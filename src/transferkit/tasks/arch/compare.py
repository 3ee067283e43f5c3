"""``arch compare``: train several networks from scratch on the same data, seed and schedule, side by side.

For each network: seed everything with the same seed, build it (random
weights), train it with the shared Lightning engine on the same seeded split
and the same batch order, record the gradient norm of every weight layer
during the first training steps, keep its best weights as a model directory.
Then one report: training and validation curves of all networks on one plot,
a table of final accuracy, parameters, MACs and time per epoch, and the
gradient-flow picture (mean gradient norm per depth at the start of training).

Run folder::

    OUT/config.yaml            resolved options (``--config OUT/config.yaml`` reproduces the run)
    OUT/results.json           the table, per network, plus gradient norms
    OUT/report.html            curves.png, gradflow.png, tables
    OUT/<network>/             metrics.csv, checkpoints/, grad_norms.json, result.json, model/
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

from transferkit.core.config import doc
from transferkit.core.engine import TrainConfig
from transferkit.errors import TransferkitError

SMALL_INPUT = 64  # below this side length, networks with a `stem` option get the small (stride-1) stem


@dataclass
class CompareConfig(TrainConfig):
    """Options of ``transferkit arch compare`` (every field is a flag: ``arch_args`` -> ``--arch-args``)."""

    names: tuple[str, ...] = doc("architectures to compare (positional NAME...)", (), metadata={"cli": False})
    data: Optional[str] = doc("digits, an MNIST IDX folder, or a folder with one subfolder of images per class", None)
    timm: bool = doc("take every NAME from timm, even where transferkit has an architecture of that name", False)
    arch_args: tuple[str, ...] = doc(
        "architecture options KEY=VALUE, given to every network whose factory takes them "
        "(e.g. width=16,stem=small; see `transferkit arch list`)", ())
    image_size: Optional[int] = doc("resize images to this square side (image folders: 32 when unset; digits/MNIST keep theirs)", None)
    grayscale: bool = doc("read image folders as grey", False)
    val_fraction: float = doc("seeded stratified part of DATA held out for validation", 0.2)
    max_samples: Optional[int] = doc("use a seeded stratified subset of this many images", None)
    optimizer: Literal["sgd", "adamw"] = doc("sgd (momentum, as He et al.) or adamw", "sgd")
    lr: float = doc("peak learning rate", 0.05)
    momentum: float = doc("SGD momentum", 0.9)
    weight_decay: float = doc("weight decay", 5e-4)
    schedule: Literal["cosine", "step", "constant"] = doc(
        "learning rate after warm-up: cosine to 0, step (divided by 10 at half and at three quarters of training), or constant", "cosine")
    warmup_epochs: float = doc("linear learning-rate warm-up, in epochs", 0.0)
    grad_batches: int = doc("first training batches whose per-layer gradient norms feed the gradient-flow diagnostics", 10)
    epochs: int = doc("training epochs (the same for every network)", 10)
    batch_size: int = doc("samples per batch", 128)

    def validate(self) -> None:
        if not self.names:
            raise TransferkitError("Name at least one architecture to train (e.g. plain18 resnet18).")
        if not self.data:
            raise TransferkitError("Give --data: digits, an MNIST IDX folder, or an image class folder.")
        if self.epochs < 1:
            raise TransferkitError("--epochs must be at least 1.")
        if self.batch_size < 2:
            raise TransferkitError("--batch-size must be at least 2 (batch norm needs two samples).")
        if not 0 < self.val_fraction < 1:
            raise TransferkitError(f"--val-fraction must be between 0 and 1 (got {self.val_fraction}).")
        if self.lr <= 0:
            raise TransferkitError("--lr must be positive.")
        if self.image_size is not None and self.image_size < 4:
            raise TransferkitError("--image-size must be at least 4.")
        if self.max_samples is not None and self.max_samples < 4:
            raise TransferkitError("--max-samples must be at least 4.")


# --------------------------------------------------------------------------- data


@dataclass
class CompareData:
    """Images as uint8 tensors (N, C, H, W) with labels, split, and the training set's channel statistics."""

    train_x: Any
    train_y: Any
    val_x: Any
    val_y: Any
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    description: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]


def stratified_subset(labels: Any, n: int, seed: int) -> Any:
    """Exactly ``n`` indices, drawn so that every class keeps its share (seeded).

    Each class's indices are shuffled and given keys (rank + u) / class size, u uniform
    in [0, 1); the n smallest keys interleave the classes in proportion.
    """
    import numpy as np

    rng = np.random.default_rng(seed + 1)
    labels = np.asarray(labels)
    keys = np.empty(len(labels))
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rng.shuffle(members)
        keys[members] = (np.arange(len(members)) + rng.random(len(members))) / len(members)
    return np.sort(np.argsort(keys, kind="stable")[:n])


def load_data(cfg: CompareConfig) -> CompareData:
    """Read DATA, resize if asked, subsample, split (seeded, stratified) and measure mean/std on the training part."""
    import numpy as np
    import torch

    from transferkit.core.datasets import load_arrays, stratified_split

    text = str(cfg.data)
    is_folder = text != "digits" and Path(text).is_dir() and not list(Path(text).glob("*-images-idx*"))
    size = (cfg.image_size or 32,) * 2 if is_folder else None
    arrays = load_arrays(text, size=size, grayscale=cfg.grayscale)
    if arrays.labels is None:
        raise TransferkitError(f"{text} has no labels: give a folder with one subfolder of images per class.")
    images = torch.from_numpy(np.ascontiguousarray(arrays.images))
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2).contiguous()
    labels = np.asarray(arrays.labels, dtype=np.int64)
    present = sorted(set(labels.tolist()))
    if len(present) < 2:
        raise TransferkitError(f"{text} has a single class; comparing classifiers needs at least two.")
    if cfg.image_size and not is_folder and tuple(images.shape[2:]) != (cfg.image_size, cfg.image_size):
        import torch.nn.functional as F

        resized = F.interpolate(images.float(), size=(cfg.image_size, cfg.image_size), mode="bilinear",
                                antialias=True, align_corners=False)
        images = resized.round().clamp(0, 255).to(torch.uint8)
    how = f"{arrays.source}"
    idx = np.arange(len(labels))
    if cfg.max_samples is not None and cfg.max_samples < len(labels):
        idx = stratified_subset(labels, cfg.max_samples, cfg.seed)
        how += f", seeded stratified subset of {len(idx)}"
    tr, va = stratified_split(labels[idx], cfg.val_fraction, cfg.seed)
    tr, va = idx[tr], idx[va]
    if len(tr) < 2 or len(va) < 1:
        raise TransferkitError(f"{text} has too few images ({len(idx)}) to split into training and validation.")
    train_x, val_x = images[tr], images[va]
    scaled = train_x.float().div_(255.0)
    mean = tuple(float(m) for m in scaled.mean(dim=(0, 2, 3)))
    std = tuple(max(float(s), 1e-3) for s in scaled.std(dim=(0, 2, 3)))
    how += f"; seeded stratified split {len(tr):,} train / {len(va):,} validation (seed {cfg.seed})"
    return CompareData(train_x, torch.from_numpy(labels[tr]), val_x, torch.from_numpy(labels[va]), list(arrays.classes),
                       mean, std, how)


# --------------------------------------------------------------------------- the Lightning module


def _schedule_factor(cfg: CompareConfig, steps_per_epoch: int):
    total = max(cfg.epochs * steps_per_epoch, 1)
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(total - warm, 1)
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
        if cfg.schedule == "step":
            return 1.0 if t < 0.5 else (0.1 if t < 0.75 else 0.01)
        return 1.0

    return factor


def tracked_weights(net: Any, sample: Any) -> list[tuple[str, Any]]:
    """Weight tensors (ndim >= 2) of the main path, in the order their modules first run on ``sample``.

    Shortcut projections (modules named ``shortcut`` or ``downsample``) sit beside the
    main path and are left out, so position i is the i-th weight layer from the input.
    """
    import torch

    order: dict[int, int] = {}

    def first_call(mod, _inputs) -> None:  # returns None: a pre-hook's return value would replace the input
        order.setdefault(id(mod), len(order))

    handles = [m.register_forward_pre_hook(first_call) for m in net.modules()]
    was = net.training
    try:
        net.eval()
        with torch.no_grad():
            net(sample)
    finally:
        net.train(was)
        for h in handles:
            h.remove()
    found = []
    for mname, mod in net.named_modules():
        parts = set(mname.split("."))
        if parts & {"shortcut", "downsample"}:
            continue
        for pname, p in mod.named_parameters(recurse=False):
            if p.ndim >= 2 and p.requires_grad:
                found.append((order.get(id(mod), 10**9), f"{mname}.{pname}" if mname else pname, p))
    found.sort(key=lambda t: t[0])
    return [(n, p) for _, n, p in found]


def _module_class():
    import lightning.pytorch as pl
    import torch
    import torch.nn.functional as F

    class CompareModule(pl.LightningModule):
        """Cross-entropy classification of normalised uint8 images; records early gradient norms per layer."""

        def __init__(self, net, cfg: CompareConfig, mean, std, steps_per_epoch: int, tracked: list[str],
                     grad_path: Path):
            super().__init__()
            self.net = net
            c = len(mean)
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1))
            self.cfg = cfg
            self.steps_per_epoch = steps_per_epoch
            self.tracked = tracked
            self.grad_path = grad_path
            self.grad_norms: list[list[float]] = []

        def forward(self, x):  # x: (N, C, H, W) uint8 -> (N, classes)
            x = (x.float() / 255.0 - self.mean) / self.std
            return self.net(x)

        def _step(self, batch, stage: str):
            x, y = batch
            logits = self(x)
            loss = F.cross_entropy(logits.float(), y)
            acc = (logits.argmax(1) == y).float().mean()
            # epoch means (training: over the epoch's batches, as the network changes)
            self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y), sync_dist=True)
            self.log(f"{stage}_acc", acc, on_step=False, on_epoch=True, prog_bar=stage == "val", batch_size=len(y), sync_dist=True)
            return loss

        def training_step(self, batch, batch_idx):
            return self._step(batch, "train")

        def validation_step(self, batch, batch_idx):
            self._step(batch, "val")

        def on_after_backward(self):
            # gradient norm of every weight layer, at the first training steps (before they change the net much)
            if self.global_step >= self.cfg.grad_batches or len(self.grad_norms) >= self.cfg.grad_batches:
                return
            params = dict(self.net.named_parameters())
            scaler = getattr(self.trainer.precision_plugin, "scaler", None)
            scale = float(scaler.get_scale()) if scaler is not None else 1.0
            norms = []
            for name in self.tracked:
                g = params[name].grad
                norms.append(float(g.detach().float().norm()) / scale if g is not None else 0.0)
            self.grad_norms.append(norms)

        def on_train_epoch_end(self):
            if self.grad_norms and not self.grad_path.is_file() and self.trainer.global_rank == 0:
                from transferkit.core.modeldir import atomic_write_text

                atomic_write_text(self.grad_path, json.dumps({"layers": self.tracked, "steps": self.grad_norms}))

        def configure_optimizers(self):
            if self.cfg.optimizer == "sgd":
                opt = torch.optim.SGD(self.parameters(), lr=self.cfg.lr, momentum=self.cfg.momentum,
                                      weight_decay=self.cfg.weight_decay)
            else:
                opt = torch.optim.AdamW(self.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule_factor(self.cfg, self.steps_per_epoch))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    return CompareModule


# --------------------------------------------------------------------------- running the comparison


def run_dir_name(label: str) -> str:
    """A folder name for a network label (``timm/resnet18`` -> ``timm_resnet18``)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def plan(cfg: CompareConfig, shape: tuple[int, int, int] | None = None) -> list[Any]:
    """Resolve the names and their options (``stem=small`` for inputs under 64 px when not given)."""
    from transferkit.tasks.arch import NetworkSpec, arch_options, parse_arch_args, resolve_arch, typed_options

    raw = parse_arch_args(cfg.arch_args)
    specs = []
    for name in cfg.names:
        ref = resolve_arch(name, prefer_timm=cfg.timm)
        opts = typed_options(ref, raw, strict=False)
        if shape is not None and "stem" in arch_options(ref) and "stem" not in raw and min(shape[1:]) < SMALL_INPUT:
            opts["stem"] = "small"
        specs.append(NetworkSpec(ref, opts))
    labels = [s.label for s in specs]
    dup = sorted({lab for lab in labels if labels.count(lab) > 1})
    if dup:
        raise TransferkitError(f"{', '.join(dup)} is named twice; name each architecture once.")
    unused = [k for k in raw if not any(k in arch_options(s.ref) for s in specs)]
    if unused:
        raise TransferkitError(
            f"No network here takes the option(s) {', '.join(unused)}; see each one's options with `transferkit arch list`."
        )
    return specs


def _probe(spec: Any, net: Any, shape: tuple[int, int, int]) -> tuple[int, int]:
    """(parameters, MACs per sample); a network that cannot take the input is a clear error."""
    from transferkit.tasks.arch.summary import macs_of

    try:
        macs = macs_of(net, shape)
    except (RuntimeError, ValueError, AssertionError, IndexError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TransferkitError(
            f"{spec.label} cannot take {shape[0]}x{shape[1]}x{shape[2]} inputs ({first}); "
            "use --image-size to resize the images (e.g. --image-size 32)."
        ) from None
    return sum(p.numel() for p in net.parameters()), macs


def _train_one(cfg: CompareConfig, spec: Any, data: CompareData, net_dir: Path, resume: bool) -> dict[str, Any] | None:
    """Train one network; returns its results (None on DDP processes other than rank 0)."""
    import torch

    from transferkit.core import engine
    from transferkit.core.backbones import Preprocessing
    from transferkit.core.modeldir import atomic_write_text, save_model_dir
    from transferkit.tasks.arch import _grey_adapter, create_network

    c, h, w = data.shape
    k = len(data.classes)
    engine.seed_everything(cfg.seed)
    net = create_network(spec.ref, num_classes=k, in_chans=c, options=spec.options)
    params, macs = _probe(spec, net, data.shape)
    first = data.train_x[: min(4, len(data.train_x))].float() / 255.0
    sample = (first - torch.tensor(data.mean).view(1, c, 1, 1)) / torch.tensor(data.std).view(1, c, 1, 1)
    tracked = tracked_weights(net, sample)
    engine.seed_everything(cfg.seed)  # the same stream for the batches of every network

    train_ds = torch.utils.data.TensorDataset(data.train_x, data.train_y)
    val_ds = torch.utils.data.TensorDataset(data.val_x, data.val_y)
    drop_last = len(train_ds) > cfg.batch_size
    train_loader = engine.make_loader(train_ds, cfg.batch_size, shuffle=True, workers=0, in_memory=True,
                                      drop_last=drop_last, seed=cfg.seed)
    val_loader = engine.make_loader(val_ds, max(cfg.batch_size, 256), shuffle=False, workers=0, in_memory=True)
    steps = max(len(train_loader), 1)
    can_resume = resume and (net_dir / engine.CHECKPOINT_DIR / engine.LAST).is_file()
    if not can_resume and net_dir.exists():
        shutil.rmtree(net_dir)  # an unfinished start without a checkpoint: nothing worth keeping
    net_dir.mkdir(parents=True, exist_ok=True)
    module = _module_class()(net, cfg, data.mean, data.std, steps, [n for n, _ in tracked], net_dir / "grad_norms.json")
    trainer = engine.make_trainer(cfg, net_dir, monitor="val_loss", mode="min", log_prefix=f"[{spec.label}] ")
    started = time.perf_counter()
    engine.fit(trainer, module, train_loader, val_loader, run_dir=net_dir, resume=can_resume)
    wall = time.perf_counter() - started
    if trainer.global_rank != 0:
        return None  # DDP: the other processes trained alongside; rank 0 writes the results
    metrics = engine.metrics_by_epoch(net_dir)
    best = engine.restore_best(trainer, module)

    grads: dict[str, Any] = {}
    if (net_dir / "grad_norms.json").is_file():
        grads = json.loads((net_dir / "grad_norms.json").read_text())
    elif module.grad_norms:
        grads = {"layers": module.tracked, "steps": module.grad_norms}
        atomic_write_text(net_dir / "grad_norms.json", json.dumps(grads))
    steps_rec = grads.get("steps") or []
    mean_norms = [sum(col) / len(col) for col in zip(*steps_rec)] if steps_rec else []

    def last(key: str) -> float | None:
        pts = metrics.get(key)
        return pts[-1][1] if pts else None

    def best_of(key: str) -> float | None:
        pts = metrics.get(key)
        return max(v for _, v in pts) if pts else None

    times = [v for _, v in metrics.get("epoch_time", [])]
    # save the best weights (by validation loss) as a model directory usable by `transferkit predict`
    to_save = module.net
    config: dict[str, Any] = {
        "task": "arch",
        "architecture": spec.ref.name,
        "source": spec.ref.source,
        "arch_args": spec.options,
        "num_classes": k,
        "in_chans": c,
        "class_names": data.classes,
        "preprocessing": Preprocessing(
            input_size=(3, h, w), interpolation="bilinear", crop_pct=1.0, crop_mode="squash",
            mean=data.mean * (3 if c == 1 else 1), std=data.std * (3 if c == 1 else 1),
        ).to_dict(),
        "training": {"data": data.description, "best_checkpoint": Path(best).name if best else None,
                     "epochs": len(times), "seed": cfg.seed},
    }
    if c == 1:
        # predict reads RGB; the adapter averages the three (equal, for grey images) channels
        to_save = _grey_adapter()(module.net)
        config["input_adapter"] = "rgb_to_grey"
    elif c != 3:
        config["preprocessing"]["input_size"] = [c, h, w]
    save_model_dir(to_save, config, net_dir / "model")
    result = {
        "name": spec.label,
        "architecture": spec.ref.name,
        "source": spec.ref.source,
        "options": spec.options,
        "params": params,
        "macs": macs,
        "weight_layers": len(tracked),
        "epochs": len(times),
        "final_train_loss": last("train_loss"),
        "final_train_acc": last("train_acc"),
        "final_val_loss": last("val_loss"),
        "final_val_acc": last("val_acc"),
        "best_val_acc": best_of("val_acc"),
        "time_per_epoch_s": (sum(times) / len(times)) if times else None,
        "wall_s": wall,
        "grad_layers": grads.get("layers") or [],
        "grad_norms": mean_norms,
        "curves": {key: metrics.get(key, []) for key in ("train_loss", "val_loss", "train_acc", "val_acc")},
    }
    atomic_write_text(net_dir / "result.json", json.dumps(result, indent=2))
    return result


def compare(cfg: CompareConfig, out: str | os.PathLike, resume: bool = False) -> dict[str, Any]:
    """Train every network of ``cfg.names`` and write the report; returns the results (also in results.json).

    Args:
        out: run folder; refused if it holds files, unless ``resume`` (then finished networks are kept,
            unfinished ones continue from their last checkpoint).
    """
    from transferkit.core import config as configmod
    from transferkit.core import engine
    from transferkit.core.modeldir import atomic_write_text

    cfg.validate()
    out = Path(out)
    specs_check = plan(cfg)  # name errors before reading any data
    if resume:
        if not (out / "config.yaml").is_file():
            raise TransferkitError(f"Nothing to resume in {out}: no config.yaml of an `arch compare` run.")
    else:
        engine.prepare_run_dir(out, resume=False)
    if engine.is_rank_zero():  # DDP: rank 0 writes the run folder
        configmod.save(cfg, out / "config.yaml")
    data = load_data(cfg)
    specs = plan(cfg, data.shape)
    del specs_check
    results = []
    for i, spec in enumerate(specs, 1):
        net_dir = out / run_dir_name(spec.label)
        done = net_dir / "result.json"
        if resume and done.is_file() and (net_dir / "model" / "config.json").is_file():
            results.append(json.loads(done.read_text()))
            print(f"[{spec.label}] already trained; kept", file=sys.stderr)
            continue
        print(f"[{spec.label}] {i}/{len(specs)}: training from scratch"
              + (f" ({', '.join(f'{k}={v}' for k, v in spec.options.items())})" if spec.options else ""), file=sys.stderr)
        results.append(_train_one(cfg, spec, data, net_dir, resume))
    if any(r is None for r in results):
        return {}  # a DDP process other than rank 0
    summary = {
        "data": data.description,
        "input_shape": list(data.shape),
        "classes": data.classes,
        "networks": results,
    }
    atomic_write_text(out / "results.json", json.dumps(summary, indent=2))
    write_report(out, cfg, summary)
    return summary


# --------------------------------------------------------------------------- the report


def table_rows(results: Sequence[dict[str, Any]]) -> list[list[Any]]:
    """Rows of the comparison table (also printed by the CLI)."""
    from transferkit.tasks.arch.summary import human

    def f(v: Any, pct: bool = False) -> Any:
        if v is None:
            return "-"
        return f"{100 * v:.2f}%" if pct else float(v)

    rows = []
    for r in results:
        rows.append([
            r["name"], f"{r['params']:,}", human(r["macs"]), r["weight_layers"], f(r["final_train_loss"]),
            f(r["final_val_loss"]), f(r["final_val_acc"], True), f(r["best_val_acc"], True),
            f"{r['time_per_epoch_s']:.1f}" if r.get("time_per_epoch_s") else "-",
        ])
    return rows


TABLE_HEADERS = ["network", "params", "MACs/sample", "weight layers", "final train loss", "final val loss",
                 "final val acc", "best val acc", "s/epoch"]


def curves_figure(results: Sequence[dict[str, Any]]):
    """Loss (log scale) and accuracy against epoch; one colour per network, solid = training, dashed = validation."""
    from transferkit.core.report import plt

    pyplot = plt()
    fig, (ax_loss, ax_acc) = pyplot.subplots(1, 2, figsize=(12, 4.2))
    colours = pyplot.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, r in enumerate(results):
        col = colours[i % len(colours)]
        for key, ax, style in (("train_loss", ax_loss, "-"), ("val_loss", ax_loss, "--"),
                               ("train_acc", ax_acc, "-"), ("val_acc", ax_acc, "--")):
            pts = r["curves"].get(key) or []
            if pts:
                ax.plot([e + 1 for e, _ in pts], [v for _, v in pts], style, color=col, marker="o", ms=2.5,
                        label=f"{r['name']} ({key.split('_')[0]})")
    ax_loss.set_yscale("log")
    ax_loss.set_title("loss (solid: training, dashed: validation)")
    ax_acc.set_title("accuracy (solid: training, dashed: validation)")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def gradflow_figure(results: Sequence[dict[str, Any]]):
    """Mean gradient norm of each weight layer at the start of training, against depth (log scale)."""
    from transferkit.core.report import plt

    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(8, 4.2))
    for r in results:
        norms = r.get("grad_norms") or []
        if norms:
            ax.plot(range(1, len(norms) + 1), norms, marker="o", ms=2.5, label=r["name"])
    ax.set_yscale("log")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("weight layer (1 = nearest the input)")
    ax.set_ylabel("gradient norm (mean over first batches)")
    ax.set_title("Gradient flow at the start of training")
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def gradient_rows(results: Sequence[dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for r in results:
        n = r.get("grad_norms") or []
        if not n:
            continue
        first, last_ = n[0], n[-1]
        rows.append([r["name"], len(n), first, sum(n) / len(n), last_, first / last_ if last_ else float("nan"),
                     min(n), max(n)])
    return rows


def write_report(out: Path, cfg: CompareConfig, summary: dict[str, Any]) -> Path:
    from transferkit.core import config as configmod
    from transferkit.core.report import Report

    results = summary["networks"]
    names = ", ".join(r["name"] for r in results)
    rep = Report(out, f"Architecture comparison: {names}")
    rep.text(f"Data: {summary['data']}; input {'x'.join(map(str, summary['input_shape']))}, "
             f"{len(summary['classes'])} classes. Every network: trained from scratch, seed {cfg.seed}, "
             f"{cfg.epochs} epochs, batch {cfg.batch_size}, {cfg.optimizer} lr {cfg.lr} ({cfg.schedule}"
             f"{f', {cfg.warmup_epochs} warm-up epochs' if cfg.warmup_epochs else ''}), weight decay {cfg.weight_decay}.")
    rep.heading("Results")
    rep.table(TABLE_HEADERS, table_rows(results),
              "final = last epoch; best = best epoch; MACs = multiply-accumulates of convolutions and matrix products "
              "for one sample; weight layers = convolutions and linear layers on the main path")
    rep.figure(curves_figure(results), "curves.png", "Training and validation curves of every network")
    rep.heading("Gradient flow")
    rep.text(f"Gradient norm of every weight layer (convolutions, linear layers; shortcut projections left out), "
             f"averaged over the first {cfg.grad_batches} training batches. Norms that fall steeply towards the "
             "input (left) are vanishing gradients: the first layers hardly learn. Norms that rise steeply towards "
             "the input are exploding gradients (what batch norm does to deep plain networks). Either way the "
             "layers learn at very different speeds; residual networks keep the norms within a narrow band.")
    rep.figure(gradflow_figure(results), "gradflow.png", "Mean gradient norm per depth at the start of training")
    rep.table(["network", "weight layers", "first layer", "mean", "last layer", "first/last", "min", "max"],
              gradient_rows(results), "gradient norms at the start of training")
    rep.config(configmod.to_dict(cfg))
    return rep.write()
