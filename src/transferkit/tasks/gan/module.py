"""LightningModules for GANs, with manual optimisation: two Adam optimisers stepped explicitly.

Each training step: (1) the discriminator step, on real images and detached fakes; (2) the generator
step, through the (just updated) discriminator.  ``self.optimizers()`` returns (generator's,
discriminator's); each holds only its own network's parameters.  Losses are binary cross-entropy
on logits (the sigmoid is inside the loss, numerically stable), or for a DCGAN the hinge loss of
spectral-norm GANs (Miyato et al. 2018; ``gan fit``'s DCGAN default).  A DCGAN's discriminator can also
see every image randomly shifted (``augment``: differentiable augmentation, off by default).

Stabilisers (all options of :class:`~transferkit.tasks.gan.config.GANConfig`): one-sided label
smoothing (real target 1 - s, fakes stay 0), spectral norm in the discriminator (in the network),
TTUR (a different discriminator learning rate), and an exponential moving average of the generator
(``g_ema``, used for the samples and the saved model).

The module also watches for a discriminator that has won: its loss within 0.01 of the lowest it can
reach (0 without smoothing) for ``collapse_steps`` steps in a row is recorded in ``self.collapse``
and reported once on stderr.
"""

from __future__ import annotations

import copy
import math
import sys
from typing import Any, Callable

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

HISTORY_EVERY = 5  # steps between rows of the per-step history (steps.csv)


def binary_entropy(p: float) -> float:
    """Lowest binary cross-entropy reachable for target p (0 for p in {0, 1})."""
    if p <= 0 or p >= 1:
        return 0.0
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


@torch.no_grad()
def recalibrate_batch_norm(g: torch.nn.Module, batches: int = 100, batch: int = 64, seed: int = 0,
                           inputs: torch.Tensor | None = None) -> None:
    """Set a generator's batch-norm running statistics to the plain average over ``batches`` batches through its
    weights: train-mode batch norm, dropout off, no gradients; its momentum and mode are restored afterwards.

    A DCGAN's batches are random z (and random labels, for a conditional one); a pix2pix U-Net's are ``inputs``
    (N, C, H, W), its real training inputs, in order (at most ``batches`` x ``batch`` of them).
    """
    norms = [m for m in g.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches below
    was = g.training
    g.train()
    for m in g.modules():
        if isinstance(m, torch.nn.Dropout):
            m.eval()  # the statistics of the network as it runs at test time (dropout off)
    device = next(g.parameters()).device
    if inputs is not None:
        for i in range(0, min(len(inputs), batches * batch), batch):
            g(inputs[i:i + batch].to(device))
    else:
        rng = torch.Generator(device="cpu").manual_seed(seed)
        k = getattr(g, "num_classes", 0)
        for _ in range(batches):
            z = torch.randn(batch, g.latent, generator=rng).to(device)
            labels = torch.randint(0, k, (batch,), generator=rng).to(device) if k else None
            g(z, labels)
    for m, mom in zip(norms, saved):
        m.momentum = mom
    g.train(was)


class _GANBase(pl.LightningModule):
    def __init__(self, generator: torch.nn.Module, discriminator: torch.nn.Module, lr_g: float, lr_d: float,
                 beta1: float, ema: float = 0.0, max_steps: int | None = None, collapse_steps: int = 200,
                 beta2: float = 0.999):
        super().__init__()
        self.automatic_optimization = False
        self.generator = generator
        self.discriminator = discriminator
        self.g_ema = None
        if ema > 0:
            self.g_ema = copy.deepcopy(generator)
            for p in self.g_ema.parameters():
                p.requires_grad_(False)
        self.ema_decay = ema
        self.lr_g, self.lr_d, self.beta1, self.beta2 = lr_g, lr_d, beta1, beta2
        self.max_gen_steps = max_steps
        self.collapse_steps = collapse_steps
        self.gen_steps = 0
        self._streak = 0
        self.collapse: dict[str, Any] | None = None
        self.history: list[dict[str, float]] = []
        self.epoch_end_hook: Callable[[Any, int], None] | None = None

    def configure_optimizers(self):
        betas = (self.beta1, self.beta2)
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=self.lr_g, betas=betas)
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=self.lr_d, betas=betas)
        return [opt_g, opt_d]

    def sampler(self) -> torch.nn.Module:
        """The generator used for pictures and the saved model: the EMA copy when there is one."""
        return self.g_ema if self.g_ema is not None else self.generator

    @torch.no_grad()
    def update_ema(self) -> None:
        if self.g_ema is None:
            return
        # warm-up: early in training the average must not remember the random initialisation for long
        decay = min(self.ema_decay, (1 + self.gen_steps) / (10 + self.gen_steps))
        for pe, p in zip(self.g_ema.parameters(), self.generator.parameters()):
            pe.lerp_(p.detach(), 1 - decay)
        for be, b in zip(self.g_ema.buffers(), self.generator.buffers()):
            be.copy_(b)

    def recalibrate_ema(self, batches: int = 100, batch: int = 64, seed: int = 0,
                        inputs: torch.Tensor | None = None) -> None:
        """Recompute the EMA generator's batch-norm statistics from its own activations.

        During training the averaged copy borrows the live generator's running statistics (``update_ema``),
        which describe the live weights' activations, not the averaged weights'.  At the end they are
        replaced by :func:`recalibrate_batch_norm`'s: over random z for a DCGAN, over ``inputs`` (the real
        training inputs) for pix2pix, which is left as it is without them.
        """
        if self.g_ema is None:
            return
        if hasattr(self.g_ema, "latent"):
            recalibrate_batch_norm(self.g_ema, batches, batch, seed)
        elif inputs is not None:
            recalibrate_batch_norm(self.g_ema, batches, batch, seed, inputs=inputs)

    def watch(self, loss_d: float, floor: float) -> None:
        """Collapse watch: the discriminator's loss near its minimum for many steps in a row."""
        self._streak = self._streak + 1 if loss_d - floor < 0.01 else 0
        if self._streak >= self.collapse_steps and self.collapse is None:
            self.collapse = {"step": self.gen_steps, "epoch": int(self.current_epoch), "steps": self._streak}
            print(f"warning: the discriminator has won (loss ~{floor:.3g}, its minimum, for {self._streak} steps from "
                  f"step {self.gen_steps - self._streak + 1}): the generator gets no useful gradient; try the "
                  "stabilisers (--spectral-norm, --label-smoothing 0.1 with --loss bce) or a lower --lr-d", file=sys.stderr,
                  flush=True)

    def after_step(self, row: dict[str, float]) -> None:
        self.gen_steps += 1
        if self.gen_steps % HISTORY_EVERY == 0 or self.gen_steps == 1:
            self.history.append({"step": self.gen_steps, "epoch": int(self.current_epoch), **row})
        if self.max_gen_steps is not None and self.gen_steps >= self.max_gen_steps:
            self.trainer.should_stop = True

    def on_train_epoch_end(self) -> None:
        if self.epoch_end_hook is not None:
            self.epoch_end_hook(self, int(self.current_epoch))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["gan_state"] = {"gen_steps": self.gen_steps}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.gen_steps = int(checkpoint.get("gan_state", {}).get("gen_steps", 0))


class DCGANModule(_GANBase):
    """DCGAN training (optionally class-conditional).  Batches are (x, y): x (N, C, S, S) in [-1, 1],
    y (N,) class indices (ignored unless the networks are conditional)."""

    def __init__(self, generator, discriminator, lr_g: float = 2e-4, lr_d: float = 2e-4, beta1: float = 0.5,
                 label_smoothing: float = 0.0, ema: float = 0.0, max_steps: int | None = None,
                 collapse_steps: int = 200, loss: str = "bce", augment: bool = False, beta2: float = 0.999):
        super().__init__(generator, discriminator, lr_g, lr_d, beta1, ema, max_steps, collapse_steps, beta2)
        if loss not in ("bce", "hinge"):
            raise ValueError(f"unknown GAN loss {loss!r}")
        self.loss_kind = loss
        self.augment = augment
        self.real_target = 1.0 - label_smoothing
        # the lowest discriminator loss: the real half's entropy (the fake half's is 0); hinge: 0
        self.d_floor = binary_entropy(self.real_target) if loss == "bce" else 0.0

    def d_loss(self, d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
        """bce: real -> 1 - smoothing, fake -> 0; hinge: mean max(0, 1 - D(x)) + mean max(0, 1 + D(G(z)))."""
        if self.loss_kind == "hinge":
            return F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
        return F.binary_cross_entropy_with_logits(d_real, torch.full_like(d_real, self.real_target)) + \
            F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))

    def g_loss(self, d_gen: torch.Tensor) -> torch.Tensor:
        """bce: the non-saturating loss (make D say "real"); hinge: -mean D(G(z))."""
        if self.loss_kind == "hinge":
            return -d_gen.mean()
        return F.binary_cross_entropy_with_logits(d_gen, torch.ones_like(d_gen))

    def training_step(self, batch, batch_idx):
        x, y = batch
        n = x.shape[0]
        opt_g, opt_d = self.optimizers()
        k = self.generator.num_classes
        z = torch.randn(n, self.generator.latent, device=x.device)  # (N, latent)
        y_fake = torch.randint(0, k, (n,), device=x.device) if k else None
        fake = self.generator(z, y_fake)  # (N, C, S, S)
        if self.augment:  # the discriminator sees every image, real or generated, randomly shifted
            from transferkit.tasks.gan.data import diff_augment

            x, fake = diff_augment(x), diff_augment(fake)

        # (1) discriminator: real -> 1 - smoothing, fake -> 0 (or the hinge margins)
        d_real = self.discriminator(x, y if k else None)  # (N,) logits
        d_fake = self.discriminator(fake.detach(), y_fake)
        loss_d = self.d_loss(d_real, d_fake)
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(loss_d)
        opt_d.step()

        # (2) generator: make the discriminator say "real"
        d_gen = self.discriminator(fake, y_fake)
        loss_g = self.g_loss(d_gen)
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss_g)
        opt_g.step()
        self.update_ema()

        d_x, d_gz = torch.sigmoid(d_real.detach()).mean(), torch.sigmoid(d_fake.detach()).mean()
        self.log("loss_d", loss_d, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log("loss_g", loss_g, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log("d_x", d_x, on_step=False, on_epoch=True, sync_dist=True)
        self.log("d_g_z", d_gz, on_step=False, on_epoch=True, sync_dist=True)
        ld = float(loss_d.detach())
        self.watch(ld, self.d_floor)
        self.after_step({"loss_d": ld, "loss_g": float(loss_g.detach()), "d_x": float(d_x), "d_g_z": float(d_gz)})


class Pix2PixModule(_GANBase):
    """pix2pix training.  Batches are (a, b): inputs and targets (N, C, S, S) in [-1, 1].

    Generator loss: ``adv_weight`` * BCE(D(a, G(a)), 1) + ``l1_weight`` * |G(a) - b|; discriminator
    loss: (BCE(D(a, b), 1) + BCE(D(a, G(a)), 0)) / 2 on every patch.  With ``adv_weight`` 0 the
    discriminator is not trained at all (the plain L1-trained U-Net).
    """

    def __init__(self, generator, discriminator, lr_g: float = 2e-4, lr_d: float = 2e-4, beta1: float = 0.5,
                 adv_weight: float = 1.0, l1_weight: float = 100.0, label_smoothing: float = 0.0, jitter: bool = True,
                 ema: float = 0.0, max_steps: int | None = None, collapse_steps: int = 200, beta2: float = 0.999):
        super().__init__(generator, discriminator, lr_g, lr_d, beta1, ema, max_steps, collapse_steps, beta2)
        self.adv_weight, self.l1_weight, self.jitter = adv_weight, l1_weight, jitter
        self.real_target = 1.0 - label_smoothing
        self.d_floor = 0.5 * binary_entropy(self.real_target)

    def training_step(self, batch, batch_idx):
        from transferkit.tasks.gan.data import jitter_pair

        a, b = batch
        if self.jitter:
            a, b = jitter_pair(a, b, a.shape[-1])
        opt_g, opt_d = self.optimizers()
        fake = self.generator(a)  # (N, Cb, S, S)
        row: dict[str, float] = {}
        if self.adv_weight > 0:
            # (1) discriminator on (input, target) pairs vs (input, translation) pairs
            d_real = self.discriminator(a, b)  # (N, 1, P, P)
            d_fake = self.discriminator(a, fake.detach())
            loss_d = 0.5 * (F.binary_cross_entropy_with_logits(d_real, torch.full_like(d_real, self.real_target))
                            + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(loss_d)
            opt_d.step()
            d_x, d_gz = torch.sigmoid(d_real.detach()).mean(), torch.sigmoid(d_fake.detach()).mean()
            self.log("loss_d", loss_d, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
            self.log("d_x", d_x, on_step=False, on_epoch=True, sync_dist=True)
            self.log("d_g_z", d_gz, on_step=False, on_epoch=True, sync_dist=True)
            row.update(loss_d=float(loss_d.detach()), d_x=float(d_x), d_g_z=float(d_gz))
            self.watch(row["loss_d"], self.d_floor)
            adv = F.binary_cross_entropy_with_logits(d_gen := self.discriminator(a, fake), torch.ones_like(d_gen))
        else:
            adv = fake.new_zeros(())
        # (2) generator
        l1 = F.l1_loss(fake, b)
        loss_g = self.adv_weight * adv + self.l1_weight * l1
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss_g)
        opt_g.step()
        self.update_ema()
        self.log("loss_g", loss_g, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log("loss_g_adv", adv, on_step=False, on_epoch=True, sync_dist=True)
        self.log("l1", l1, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        row.update(loss_g=float(loss_g.detach()), loss_g_adv=float(adv.detach()), l1=float(l1.detach()))
        self.after_step(row)
