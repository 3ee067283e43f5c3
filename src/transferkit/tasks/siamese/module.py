"""The LightningModule of a Siamese run: shared encoder, injected objective, one-shot validation, a time-aware schedule.

Each training step takes a class-balanced batch (uint8 images), applies
Koch's affine distortions to the whole batch at once, embeds it with the one
encoder and hands ``(embeddings, labels, net)`` to the objective
(:mod:`transferkit.tasks.siamese.losses`).

Validation embeds the held-out classes once per epoch and logs ``val_acc``:
the accuracy of fixed, seeded N-way one-shot episodes (the number that the
best checkpoint is chosen by).

The learning rate warms up linearly, then follows a cosine from the peak to
1% of it.  Progress is ``max(step / total_steps, elapsed / time_budget)``, so
with ``--time-budget`` the schedule finishes annealing in time even on a busy
machine, and training stops when progress reaches 1.
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import lightning.pytorch as pl
import torch

from transferkit.core import freezing
from transferkit.tasks.siamese.data import AffineRanges, random_affine, to_float_tensor
from transferkit.tasks.siamese.episodes import Episode, episode_accuracies


class SiameseModule(pl.LightningModule):
    """Trains ``net`` (a :class:`~transferkit.tasks.siamese.model.SiameseNet`) with ``objective``.

    Args:
        net: the Siamese network.
        objective: callable ``(embeddings, labels, net) -> loss``.
        cfg: the run's :class:`~transferkit.tasks.siamese.config.SiameseConfig`.
        val_episodes: fixed episodes over the validation images (may be empty).
        stages: the encoder's stages when it is a pretrained backbone ([] otherwise).
        frozen: how many of ``stages`` stay frozen.
    """

    def __init__(self, net: torch.nn.Module, objective: Any, cfg: Any, val_episodes: Sequence[Episode] = (),
                 stages: Sequence[freezing.Stage] = (), frozen: int = 0):
        super().__init__()
        self.net = net
        self.objective = objective
        self.cfg = cfg
        self.val_episodes = list(val_episodes)
        self.stages = list(stages)
        self.frozen = frozen
        self.ranges = AffineRanges(cfg.rotate, cfg.shear, tuple(cfg.scale), cfg.translate, cfg.augment_p, cfg.elastic)
        # one-shot episodes re-centred on their support set (--center); the pair head's L1 distance would not change
        self.center = cfg.center and net.kind == "metric"
        self.total_steps = max(1, cfg.epochs * cfg.steps_per_epoch)
        self.elapsed_before = 0.0  # training seconds of earlier sessions (resume)
        self._t0: float | None = None
        self._val_emb: list[torch.Tensor] = []
        self._aug_gen = torch.Generator().manual_seed(cfg.seed)

    # ---------------------------------------------------------------- schedule

    def elapsed(self) -> float:
        return self.elapsed_before + (time.perf_counter() - self._t0 if self._t0 is not None else 0.0)

    def progress(self) -> float:
        p = self.global_step / self.total_steps
        if self.cfg.time_budget:
            p = max(p, self.elapsed() / (60.0 * self.cfg.time_budget))
        return min(p, 1.0)

    def lr_factor(self) -> float:
        warm = min(1.0, (self.global_step + 1) / self.cfg.warmup_steps) if self.cfg.warmup_steps > 0 else 1.0
        return warm * (0.01 + 0.99 * (1 + math.cos(math.pi * self.progress())) / 2)

    def on_fit_start(self) -> None:
        self._t0 = time.perf_counter()
        if self.stages:
            freezing.set_frozen(self.net.encoder, self.stages, self.frozen)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        if self.progress() >= 1.0:
            self.trainer.should_stop = True
            return -1  # ends the epoch; the trainer then stops
        freezing.keep_frozen_bn_eval(self.net)
        f = self.lr_factor()
        for group in self.optimizers().param_groups:
            group["lr"] = group["base_lr"] * f
        return None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["siamese_elapsed"] = self.elapsed()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.elapsed_before = float(checkpoint.get("siamese_elapsed", 0.0))

    # ---------------------------------------------------------------- steps

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W[, 3]) -> float (B, C, H, W) in [0, 1] on the module's device."""
        x = x.to(self.device)
        x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
        return x.float().div_(255.0)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        x = random_affine(self._prep(x), self.ranges, self._aug_gen if x.device.type == "cpu" else None)
        emb = self.net.embed(self._layout(x))
        loss = self.objective(emb, y.to(self.device), self.net)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y), sync_dist=True)
        self.log("lr", self.optimizers().param_groups[-1]["lr"], on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        (x,) = batch
        self._val_emb.append(self.net.embed(self._layout(x.to(self.device))).float())

    def on_validation_epoch_end(self) -> None:
        if not self._val_emb:
            return
        emb = torch.cat(self._val_emb)
        self._val_emb = []
        if self.val_episodes:
            acc = float(episode_accuracies(self.net.cdist, emb, self.val_episodes, self.center).mean())
            self.log("val_acc", acc, prog_bar=True, sync_dist=True)

    # ---------------------------------------------------------------- optimiser

    def configure_optimizers(self):
        cfg = self.cfg
        head = torch.nn.ModuleDict({"project": self.net.project, "head": self.net.head})
        if self.stages:
            lr_range = freezing.parse_lr_range(cfg.lr_range) if cfg.lr_range else None
            groups = freezing.layer_lr_groups(self.net.encoder, head, cfg.lr, layer_decay=cfg.layer_decay,
                                              lr_range=lr_range, weight_decay=cfg.weight_decay, stages=self.stages)
        else:
            groups = freezing.layer_lr_groups(torch.nn.Module(), head, cfg.lr, weight_decay=cfg.weight_decay, stages=[])
            enc = freezing.layer_lr_groups(torch.nn.Module(), self.net.encoder, cfg.lr, weight_decay=cfg.weight_decay,
                                           stages=[], head_name="encoder")
            groups = enc + groups
        for g in groups:
            g["base_lr"] = g["lr"]
        return torch.optim.AdamW(groups, lr=cfg.lr)


def val_loader(images: Any, batch_size: int = 256):
    """A DataLoader over validation images (uint8 array) as float batches in [0, 1]."""
    ds = torch.utils.data.TensorDataset(to_float_tensor(images))
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0)
