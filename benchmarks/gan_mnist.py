"""GAN benchmark: DCGAN on MNIST with vs without the default stabilisers, and pix2pix --edges with vs
without the adversarial loss, each pair in one run, at equal generator steps.

DCGAN: ``gan fit MNIST --kind dcgan`` twice on the same seeded 90/10 split of the MNIST test IDX, at equal
generator steps, or with ``--equal-time`` the bare default first and the reference for the same training time:
(a) the defaults (width 32, one block per scale, hinge loss with TTUR, spectral norm in D, generator EMA 0.999);
(b) the PyTorch examples' DCGAN recipe as published (batch norm in D, hard labels, no EMA, equal rates).
Metric: FID and KID on the 84-d F6 features of a LeNet-5 trained here on the training rows' labels,
with the real-vs-real floor; the share of samples that LeNet-5 classifies with probability > 0.9
against the share of unseen real digits; the largest share one digit takes of the samples.

pix2pix: ``gan fit PHOTOS --kind pix2pix --edges`` with the default adversarial weight 1 and with
``--adv-weight 0`` (the L1-only U-Net), FID (EfficientNet-Lite0 features) / SSIM / L1 on held-out photos.

    python benchmarks/gan_mnist.py ../shared/data/mnist --photos ../shared/data/hymenoptera/train --out /tmp/ganbench
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch


def train_lenet(x: torch.Tensor, y: torch.Tensor, run_dir: Path, epochs: int, seed: int):
    """LeNet-5 on digits (N, 1, 28, 28) in [-1, 1], trained with Lightning; returns it in eval mode."""
    import lightning.pytorch as pl
    import torch.nn.functional as F

    from transferkit.archs.lenet import LeNet5
    from transferkit.core import engine

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = LeNet5(10, 1)

        def training_step(self, batch, _):
            loss = F.cross_entropy(self.net(batch[0]), batch[1])
            self.log("train_loss", loss, on_step=False, on_epoch=True)
            return loss

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=2e-3)

    engine.seed_everything(seed)
    m = Module()
    cfg = engine.TrainConfig(epochs=epochs, precision="32", device="cpu")
    loader = engine.make_loader(torch.utils.data.TensorDataset(x, y), 128, shuffle=True, workers=0, in_memory=True)
    trainer = engine.make_trainer(cfg, run_dir, monitor=None)
    trainer.fit(m, loader)
    return m.net.eval()


def lenet_outputs(net, x: torch.Tensor):
    """(F6 features (N, 84) float64, class probabilities (N, 10))."""
    feats, probs = [], []
    with torch.inference_mode():
        for i in range(0, len(x), 500):
            f = net.forward_features(x[i : i + 500])
            feats.append(f.double())
            probs.append(torch.softmax(net.fc(f), 1))
    return torch.cat(feats), torch.cat(probs).numpy()


def dcgan_part(args, out: Path) -> dict:
    from transferkit.core.datasets import load_mnist
    from transferkit.tasks.gan import GANConfig, fit
    from transferkit.tasks.gan.data import split_rows, to_tensor
    from transferkit.tasks.gan.metrics import confident_share, fid_report
    from transferkit.tasks.gan.train import generate, load_gan

    arrays = load_mnist(args.data)
    x_all, y_all = to_tensor(arrays.images), torch.as_tensor(arrays.labels)
    train, held = split_rows(len(arrays), 0.1, args.seed)  # the split fit makes (val_fraction 0.1, seed)
    t0 = time.perf_counter()
    lenet = train_lenet(x_all[train], y_all[train], out / "lenet", args.lenet_epochs, args.seed)
    real_f, real_p = lenet_outputs(lenet, x_all[held])
    held_acc = float((real_p.argmax(1) == y_all[held].numpy()).mean())
    print(f"LeNet-5: {time.perf_counter() - t0:.0f} s, held-out accuracy {held_acc:.4f}", file=sys.stderr, flush=True)
    real_share = confident_share(real_p)
    variants = {
        "default (hinge loss, TTUR, Adam beta1 0, spectral norm, EMA 0.999)": dict(),
        # the examples' published recipe: batch 64, Adam 2e-4 / beta1 0.5 for both networks, batch norm in D, hard labels
        "PyTorch example recipe (no stabilisers)": dict(label_smoothing=0.0, spectral_norm=False, ema=0.0, batch_size=64,
                                                        lr=2e-4, lr_d=2e-4, beta1=0.5, width=64, blocks=0,
                                                        loss="bce"),
    }
    rows = {}
    budget = None  # --equal-time: the reference trains for the default's training seconds
    for name, over in variants.items():
        if args.equal_time:  # the bare default (`gan fit MNIST --kind dcgan`), then the reference for as long
            extra = dict(seed=args.seed, threads=args.threads) if not over else dict(
                epochs=1000, time_budget=budget, fid=False, seed=args.seed, threads=args.threads)
            cfg = GANConfig(kind="dcgan", **extra, **over)
        else:
            kw = dict(kind="dcgan", epochs=1000, max_steps=args.steps, width=args.width, precision="32", fid=False,
                      time_budget=0, seed=args.seed, threads=args.threads, **over)
            kw["batch_size"] = args.batch_size  # equal steps: both sides at --batch-size
            cfg = GANConfig(**kw)
        run = out / ("dcgan_default" if not over else "dcgan_plain")
        t_fit = time.perf_counter()
        fit(cfg, args.data, run)
        fit_s = time.perf_counter() - t_fit
        res = json.loads((run / "metrics.json").read_text())
        budget = res["train_seconds"] / 60.0
        tm, _ = load_gan(run)
        g = torch.Generator().manual_seed(args.seed + 1)
        fake = generate(tm.module, torch.randn(len(held), cfg.latent, generator=g))
        fake_f, fake_p = lenet_outputs(lenet, fake)
        r = fid_report(real_f, fake_f, seed=args.seed)
        conf = fake_p.max(1) > 0.9
        digits = np.bincount(fake_p.argmax(1), minlength=10) / len(fake_p)
        rows[name] = {**{k: r[k] for k in ("fid", "kid", "fid_floor", "kid_floor", "n_real", "n_fake")},
                      "confident_share": confident_share(fake_p), "confident_vs_real": confident_share(fake_p) / real_share,
                      "top_digit_share": float(digits.max()), "steps": res["steps"], "train_seconds": res["train_seconds"],
                      "fit_seconds": round(fit_s, 1),
                      "collapse": res["collapse"], "confident_of_confident": int(conf.sum())}
        print(name, json.dumps(rows[name]), file=sys.stderr, flush=True)
    a, b = rows.values()
    return {"real_confident_share": real_share, "lenet_held_out_accuracy": held_acc, "variants": rows,
            "fid_ratio_default_over_plain": a["fid"] / b["fid"] if b["fid"] else None}


def pix2pix_part(args, out: Path) -> dict:
    from transferkit.tasks.gan import GANConfig, evaluate, fit

    rows = {}
    steps = None  # --p2p-default: the L1-only side makes as many generator steps as the default side did
    for name, adv in (("L1 + adversarial (default, --adv-weight 1)", 1.0), ("L1 only (--adv-weight 0)", 0.0)):
        if args.p2p_default:  # `gan fit PHOTOS --kind pix2pix --edges [--adv-weight 0]`, a larger held-out part
            extra = {} if adv else dict(max_steps=steps, time_budget=0, epochs=1000)
            cfg = GANConfig(kind="pix2pix", edges=True, adv_weight=adv, fid=False, val_fraction=args.p2p_val,
                            seed=args.seed, threads=args.threads, **extra)
        else:
            cfg = GANConfig(kind="pix2pix", edges=True, image_size=args.p2p_size, epochs=1000, max_steps=args.p2p_steps,
                            time_budget=0,
                            batch_size=args.p2p_batch, width=args.p2p_width, adv_weight=adv, precision="32", fid=False,
                            val_fraction=args.p2p_val, seed=args.seed, threads=args.threads)
        t_fit = time.perf_counter()
        run = out / ("p2p_adv" if adv else "p2p_l1")
        fit(cfg, args.photos, run)
        fit_s = time.perf_counter() - t_fit
        res = json.loads((run / "metrics.json").read_text())
        steps = res["steps"]
        r = evaluate(run, args.photos, seed=args.seed)
        rows[name] = {**{k: r[k] for k in ("fid", "kid", "fid_floor", "n_real", "n_fake", "l1", "psnr", "ssim")},
                      "steps": res["steps"], "train_seconds": res["train_seconds"], "collapse": res["collapse"],
                      "fit_seconds": round(fit_s, 1)}
        print(name, json.dumps(rows[name]), file=sys.stderr, flush=True)
    a, b = rows.values()
    return {"variants": rows, "fid_ratio_adv_over_l1": a["fid"] / b["fid"] if b["fid"] else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="MNIST IDX folder")
    ap.add_argument("--photos", help="a folder of photos for pix2pix --edges (skipped when absent)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--equal-time", action="store_true",
                    help="dcgan: the bare `gan fit --kind dcgan` default, then the reference for the same training time "
                         "(--steps, --width, --batch-size are then ignored)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--lenet-epochs", type=int, default=10,
                    help="epochs of the LeNet-5 judge (10: about 97%% held-out accuracy; fewer under-rates confident samples)")
    ap.add_argument("--p2p-default", action="store_true",
                    help="pix2pix: the default recipe (size, width, batch, epochs) with and without the adversarial term "
                         "(--p2p-steps/-size/-batch/-width are then ignored; --p2p-val held out); the L1-only side "
                         "makes as many generator steps as the default side")
    ap.add_argument("--p2p-val", type=float, default=0.2, help="pix2pix: held-out fraction (default 0.2)")
    ap.add_argument("--p2p-steps", type=int, default=150)
    ap.add_argument("--p2p-size", type=int, default=64)
    ap.add_argument("--p2p-batch", type=int, default=8)
    ap.add_argument("--p2p-width", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-dcgan", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"args": vars(args)}
    if not args.skip_dcgan:
        result["dcgan"] = dcgan_part(args, out)
    if args.photos:
        result["pix2pix"] = pix2pix_part(args, out)
    (out / "results.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
