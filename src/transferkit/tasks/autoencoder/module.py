"""LightningModules: the autoencoder objective, one greedy layer, and the classifier of `finetune`.

All three are run by :func:`transferkit.core.engine.make_trainer`'s Trainer.
Batches are ``(x,)`` with ``x`` the clean target images (N, C, H, W) in [0, 1];
the module derives the network's input from it (grey for ``--colorize``,
corrupted for ``denoising``), so the loss always compares with the clean image.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from transferkit.tasks.autoencoder.noise import corrupt


def cosine_schedule(optimizer: Any, trainer: Any, warmup_frac: float = 0.03) -> dict[str, Any]:
    """Per-step linear warm-up then cosine decay to 0 over the whole run (Lightning scheduler dict)."""
    total = max(1, int(trainer.estimated_stepping_batches))
    warm = max(1, int(total * warmup_frac))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, total - warm))
        return 0.5 * (1 + math.cos(math.pi * t))

    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "interval": "step"}


def kl_sparsity(codes: torch.Tensor, target: float) -> torch.Tensor:
    """Sum over code units of KL(target || mean activation over the batch); codes in (0, 1)."""
    rho = codes.mean(dim=0).clamp(1e-6, 1 - 1e-6)  # (latent,)
    t = target
    return (t * torch.log(t / rho) + (1 - t) * torch.log((1 - t) / (1 - rho))).sum()


class AutoencoderModule(pl.LightningModule):
    """Trains a whole autoencoder: MSE to the clean image, plus the sparsity penalty for ``sparse``.

    Args:
        net: a DenseAE or ConvAE.
        objective: dict with ``kind``, ``colorize``, ``noise``, ``level``,
            ``sparsity``, ``penalty``, ``target`` (from the run config).
        lr: peak learning rate (Adam, warm-up then cosine decay).
    """

    def __init__(self, net: torch.nn.Module, objective: dict[str, Any], lr: float):
        super().__init__()
        self.net = net
        self.obj = dict(objective)
        self.lr = lr

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """The network's input for clean images ``x``: grey for colourisation, corrupted for denoising."""
        if self.obj.get("colorize"):
            from transferkit.tasks.autoencoder.data import grey_of

            x = grey_of(x)
        if self.obj["kind"] == "denoising":
            x = corrupt(x, self.obj["noise"], self.obj["level"])
        return x

    def _loss(self, x: torch.Tensor, stage: str) -> torch.Tensor:
        z = self.net.encode(self.inputs(x))  # (N, latent)
        rec = self.net.decode(z)  # (N, C, H, W)
        mse = F.mse_loss(rec, x)
        loss = mse
        if self.obj["kind"] == "sparse":
            if self.obj["sparsity"] == "kl":
                penalty = kl_sparsity(z, self.obj["target"])
            else:
                penalty = z.abs().mean()
            loss = mse + self.obj["penalty"] * penalty
            self.log(f"{stage}_sparsity", penalty, on_step=False, on_epoch=True, sync_dist=True)
        self.log(f"{stage}_mse", mse, on_step=False, on_epoch=True, prog_bar=stage == "val", sync_dist=True)
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._loss(batch[0], "train")

    def validation_step(self, batch, batch_idx):
        self._loss(batch[0], "val")

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.net.parameters(), lr=self.lr)
        return {"optimizer": opt, "lr_scheduler": cosine_schedule(opt, self.trainer)}


class GreedyLayerModule(pl.LightningModule):
    """Greedy layer-wise pretraining, layer ``k`` of a DenseAE.

    The first ``k`` encoder layers are frozen (no gradients, never given to the
    optimiser); they turn each batch into codes ``h`` (N, sizes[k]).  Layer
    ``k`` is the one-hidden-layer autoencoder ``h -> encoder.layers[k] ->
    decoder.layers[k] -> h'`` trained on MSE(h', h).
    """

    def __init__(self, net: torch.nn.Module, k: int, lr: float):
        super().__init__()
        self.net = net
        self.k = k
        self.lr = lr
        for i, (enc, dec) in enumerate(zip(net.encoder.layers, net.decoder.layers)):
            for p in (*enc.parameters(), *dec.parameters()):
                p.requires_grad_(i == k)

    def trainable(self) -> list[torch.nn.Parameter]:
        return [*self.net.encoder.layers[self.k].parameters(), *self.net.decoder.layers[self.k].parameters()]

    def _loss(self, x: torch.Tensor, stage: str) -> torch.Tensor:
        with torch.no_grad():
            h = self.net.encoder(x, upto=self.k)  # (N, sizes[k]): codes of the finished layers
        code = self.net.encoder.layer(self.k, h)
        rec = self.net.decoder.layer(self.k, code)
        loss = F.mse_loss(rec, h)
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._loss(batch[0], "train")

    def validation_step(self, batch, batch_idx):
        self._loss(batch[0], "val")

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.trainable(), lr=self.lr)
        return {"optimizer": opt, "lr_scheduler": cosine_schedule(opt, self.trainer)}


class ClassifierModule(pl.LightningModule):
    """Cross-entropy on an :class:`EncoderClassifier`; with ``freeze_encoder`` only the head learns."""

    def __init__(self, net: torch.nn.Module, lr: float, freeze_encoder: bool):
        super().__init__()
        self.net = net
        self.lr = lr
        self.freeze_encoder = freeze_encoder
        for p in net.encoder_parameters():
            p.requires_grad_(not freeze_encoder)

    def on_train_epoch_start(self):
        if self.freeze_encoder:  # frozen means frozen: batch-norm statistics too
            self.net.ae.eval()

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(dim=1) == y).float().mean()
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log(f"{stage}_acc", acc, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def configure_optimizers(self):
        params = [p for p in self.net.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=1e-4)
        return {"optimizer": opt, "lr_scheduler": cosine_schedule(opt, self.trainer)}
