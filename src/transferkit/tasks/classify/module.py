"""The LightningModule that trains a :class:`~transferkit.tasks.classify.model.Classifier`, and its schedules.

One module serves the ``freeze``, ``finetune`` and ``gradual`` strategies (and
the ``softmax`` head of the ``features`` strategy, whose "backbone" is the
identity on cached features).  What differs is only which backbone stages are
frozen at each epoch (:meth:`ClassifierModule.frozen_stages`), a pure
function of the epoch so that a resumed run freezes exactly what the
interrupted one would have.

The optimiser gets one parameter group per backbone stage plus one for the
head (``core.freezing.layer_lr_groups``: ``--layer-decay`` or ``--lr-range``),
frozen stages included (they have no gradients, so the optimiser skips them
until they are unfrozen).  The learning rate follows :class:`Schedule` at
every step.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from transferkit.core import freezing


class Schedule:
    """Learning-rate multiplier per optimiser step (a picklable ``LambdaLR`` function).

    The run is cut into segments (one, or two for ``gradual``: head phase, then
    unfrozen phase); each segment gets its own cycle(s):

    * ``constant``: 1;
    * ``cosine``: cosine annealing from 1 to 1% in ``restarts + 1`` equal
      cycles (SGDR: warm restarts);
    * ``onecycle``: warm up from 1/25 to 1 over 30% of the segment, then
      anneal to 1/10^4 (cosine), the shape of ``torch.optim.lr_scheduler.OneCycleLR``.

    ``warmup`` steps of linear warm-up start each cycle (cosine and constant).
    """

    def __init__(self, kind: str, boundaries: Sequence[int], restarts: int = 0, warmup: int = 0):
        self.kind = kind
        self.boundaries = [int(b) for b in boundaries]
        self.restarts = int(restarts)
        self.warmup = int(warmup)

    def __call__(self, step: int) -> float:
        b = self.boundaries
        seg = 0
        while seg + 2 < len(b) and step >= b[seg + 1]:
            seg += 1
        start, end = b[seg], max(b[seg + 1], b[seg] + 1)
        t = min(max(step - start, 0), end - start - 1)
        n = end - start
        if self.kind == "onecycle":
            up = max(1, int(0.3 * n))
            if t < up:
                lo = 1 / 25
                return lo + (1 - lo) * (1 - math.cos(math.pi * t / up)) / 2
            lo = 1 / 1e4
            frac = (t - up) / max(1, n - up - 1)
            return lo + (1 - lo) * (1 + math.cos(math.pi * frac)) / 2
        cycle = max(1, math.ceil(n / (self.restarts + 1))) if self.kind == "cosine" else n
        tc = t % cycle
        warm = min(1.0, (tc + 1) / self.warmup) if self.warmup > 0 else 1.0
        if self.kind == "constant":
            return warm
        return warm * (0.01 + 0.99 * (1 + math.cos(math.pi * tc / max(1, cycle - 1))) / 2)


class ClassifierModule(pl.LightningModule):
    """Cross-entropy training of ``net`` (a Classifier) with per-stage learning rates and freezing.

    Args:
        net: the classifier (``net.backbone``, ``net.head``).
        cfg: the run's :class:`~transferkit.tasks.classify.config.ClassifyConfig`.
        stages: the backbone's stages (bottom first); [] for a feature-input probe.
        class_weights: per-class loss weights, or None.
    """

    def __init__(self, net: torch.nn.Module, cfg: Any, stages: Sequence[freezing.Stage],
                 class_weights: torch.Tensor | None = None):
        super().__init__()
        self.net = net
        self.cfg = cfg
        self.stages = list(stages)
        self.class_weights = class_weights
        self._frozen_now: int | None = None

    # ---------------------------------------------------------------- freezing per epoch

    def frozen_stages(self, epoch: int) -> int:
        """Backbone stages frozen during ``epoch`` (0-based) for the configured strategy."""
        n = len(self.stages)
        cfg = self.cfg
        if n == 0 or cfg.strategy in ("finetune",):
            return 0
        if cfg.strategy == "freeze":
            return freezing.resolve_freeze_to(cfg.freeze_to, n)
        if cfg.strategy == "gradual":
            return freezing.frozen_stages_at(epoch, n, cfg.head_epochs, cfg.unfreeze, cfg.stage_epochs)
        return n  # features (softmax probe): nothing to train in the backbone

    def apply_freezing(self, epoch: int) -> int:
        k = self.frozen_stages(epoch)
        if k != self._frozen_now:
            freezing.set_frozen(self.net.backbone, self.stages, k)
            self._frozen_now = k
        if self.net.training:
            freezing.keep_frozen_bn_eval(self.net)
        return k

    def on_fit_start(self) -> None:
        self.apply_freezing(self.current_epoch)

    def on_train_epoch_start(self) -> None:
        k = self.apply_freezing(self.current_epoch)
        self.log("frozen_stages", float(k), on_step=False, on_epoch=True, sync_dist=True)

    # ---------------------------------------------------------------- steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.channels_last and x.ndim == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def _loss(self, logits: torch.Tensor, y: torch.Tensor, smoothing: float) -> torch.Tensor:
        w = self.class_weights.to(logits.device) if self.class_weights is not None else None
        return F.cross_entropy(logits.float(), y, weight=w, label_smoothing=smoothing)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self.net(self._prep(x))
        loss = self._loss(logits, y, self.cfg.label_smoothing)
        acc = (logits.argmax(1) == y).float().mean()
        n = len(y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        self.log("train_acc", acc, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        opt = self.optimizers()
        groups = opt.param_groups if hasattr(opt, "param_groups") else opt.optimizer.param_groups
        self.log("lr_head", groups[-1]["lr"], on_step=True, on_epoch=False)
        self.log("lr_bottom", groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self.net(self._prep(x))
        n = len(y)
        self.log("val_loss", self._loss(logits, y, 0.0), on_step=False, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        self.log("val_acc", (logits.argmax(1) == y).float().mean(), on_step=False, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)

    # ---------------------------------------------------------------- optimiser

    def param_groups(self) -> list[dict[str, Any]]:
        cfg = self.cfg
        lr_range = freezing.parse_lr_range(cfg.lr_range) if cfg.lr_range else None
        decay = cfg.layer_decay if cfg.strategy != "features" else None
        return freezing.layer_lr_groups(self.net.backbone, self.net.head, cfg.lr, layer_decay=decay, lr_range=lr_range,
                                        weight_decay=cfg.weight_decay, stages=self.stages)

    def configure_optimizers(self):
        cfg = self.cfg
        groups = self.param_groups()
        if cfg.optimizer == "sgd":
            opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
        else:
            opt = torch.optim.AdamW(groups, lr=cfg.lr)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        epochs = max(1, int(self.trainer.max_epochs or cfg.epochs))
        per_epoch = max(1, total // epochs)
        bounds = [0, total]
        if cfg.strategy == "gradual" and 0 < cfg.head_epochs < epochs:
            bounds = [0, cfg.head_epochs * per_epoch, total]
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, Schedule(cfg.schedule, bounds, cfg.restarts, int(round(cfg.warmup_epochs * per_epoch))))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class FlushMetrics(pl.Callback):
    """Write metrics.csv at every epoch start and validation end, so a killed run keeps its curves."""

    def _flush(self, trainer: Any) -> None:
        if trainer.logger is not None and trainer.global_rank == 0:
            trainer.logger.save()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._flush(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        self._flush(trainer)


def drop_lr_monitor(trainer: Any) -> Any:
    """Remove Lightning's LearningRateMonitor from a Trainer.

    With one parameter group per backbone stage it would add a column (and an
    entry in every epoch line) per group; :class:`ClassifierModule` logs the
    head's and the bottom stage's rates at every step instead.
    """
    from lightning.pytorch.callbacks import LearningRateMonitor

    trainer.callbacks[:] = [c for c in trainer.callbacks if not isinstance(c, LearningRateMonitor)]
    return trainer
