"""The LightningModule that trains ``yolo`` and ``localize`` detectors (run by ``core.engine.make_trainer``)."""

from __future__ import annotations

import math
import time
from typing import Any

import lightning.pytorch as pl
import torch

from transferkit.tasks.detect.config import DetectConfig


class DetectModule(pl.LightningModule):
    """Loss from the network's own ``loss``; validation logs ``val_loss``, ``val_map50`` and ``val_map``.

    Learning rate: linear warm-up, then a cosine decay over the training's progress, measured as the larger
    of the share of steps done and the share of ``--time-budget`` used, so a time-limited run still ends
    on a low rate.
    """

    def __init__(self, net: torch.nn.Module, cfg: DetectConfig, total_steps: int):
        super().__init__()
        self.net = net
        self.cfg = cfg
        self.size = int(cfg.image_size)
        self.total_steps = max(1, int(total_steps))
        self._start: float | None = None
        self._val: list[tuple[dict, dict]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _losses(self, batch) -> dict[str, torch.Tensor]:
        x, targets = batch
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.net(x)
        return self.net.loss(out, targets, self.size, center_radius=self.cfg.center_radius,
                             box_weight=self.cfg.box_weight), out

    def training_step(self, batch, batch_idx):
        if self._start is None:
            self._start = time.monotonic()
        losses, _ = self._losses(batch)
        n = len(batch[1])
        self.log("train_loss", losses["loss"], on_step=False, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        for k in ("loss_obj", "loss_box", "loss_cls"):
            self.log(f"train_{k}", losses[k], on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        return losses["loss"]

    def validation_step(self, batch, batch_idx):
        losses, out = self._losses(batch)
        self.log("val_loss", losses["loss"], on_step=False, on_epoch=True, prog_bar=True, batch_size=len(batch[1]), sync_dist=True)
        dets = self.net.detect(out, self.size, conf=0.001, iou=self.cfg.iou, max_det=self.cfg.max_det)
        for d, t in zip(dets, batch[1]):
            self._val.append(({k: v.cpu() for k, v in d.items()}, {k: v.cpu() for k, v in t.items()}))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        from transferkit.tasks.detect.metrics import mean_average_precision

        m = mean_average_precision([p for p, _ in self._val], [t for _, t in self._val], class_metrics=False)
        self._val = []
        self.log("val_map50", m["map50"], prog_bar=True, sync_dist=True)
        self.log("val_map", m["map"], sync_dist=True)

    def _progress(self, step: int) -> float:
        p = step / self.total_steps
        if self.cfg.time_budget and self._start is not None:
            p = max(p, (time.monotonic() - self._start) / (60.0 * self.cfg.time_budget))
        return min(1.0, p)

    def configure_optimizers(self):
        body = [p for p in self.net.body.parameters() if p.requires_grad]
        ids = {id(p) for p in body}
        rest = [p for p in self.net.parameters() if id(p) not in ids and p.requires_grad]
        groups = [{"params": rest, "lr": self.cfg.lr}]
        if self.cfg.backbone_lr > 0:
            groups.append({"params": body, "lr": self.cfg.lr * self.cfg.backbone_lr})
        else:
            for p in body:
                p.requires_grad_(False)
        opt = torch.optim.AdamW(groups, weight_decay=self.cfg.weight_decay)
        warm = 0.03  # share of the training (steps or time budget) spent warming up

        def factor(step: int) -> float:
            p = self._progress(step)
            if p < warm:
                return max(p / warm, 0.02)
            return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * (p - warm) / (1 - warm)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
