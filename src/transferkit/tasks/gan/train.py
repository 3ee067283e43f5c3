"""`gan fit`, `eval`, `sample`, `translate` and `predict`: the task's Python API.

A run directory holds ``config.yaml``, ``split.json`` (held-out rows), ``checkpoints/``,
``metrics.csv`` (per epoch), ``steps.csv`` (losses and D(x) / D(G(z)) every few steps),
``samples/epoch_NNN.png`` (the same latent points, or the same validation pairs, every epoch),
``fid.csv`` (FID over epochs, with ``--fid-every``), ``metrics.json`` (final figures),
``report.html`` and the generator in ``model/`` (the EMA generator when --ema is on).
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from transferkit.errors import TransferkitError
from transferkit.tasks.gan.config import GANConfig, check_size

SPLIT_FILE = "split.json"
METRICS_FILE = "metrics.json"
N_FIXED = 64  # samples in each epoch's grid


def _source_id(data: Any, cfg_like: dict[str, Any]) -> str:
    text = os.fspath(data)
    extra = ""
    if cfg_like.get("kind") == "pix2pix":
        extra = f"|edges={bool(cfg_like.get('edges'))}|direction={cfg_like.get('direction')}"
    return str(Path(text).resolve()) + extra


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(int(threads))


# --------------------------------------------------------------------------- data


class Prepared:
    """Tensors and shapes of a run's data (train/held-out rows already applied)."""

    def __init__(self, **kw: Any):
        self.__dict__.update(kw)


def prepare_data(cfg: GANConfig, data: Any) -> Prepared:
    import torch

    from transferkit.tasks.gan.data import is_mnist, read_pairs, read_unpaired, split_rows, to_tensor

    size = cfg.resolved_size(cfg.kind == "dcgan" and not isinstance(data, (bytes,)) and is_mnist(data))
    check_size(cfg.kind, size)
    if cfg.kind == "dcgan":
        arrays = read_unpaired(data, size, cfg.grayscale)
        classes: list[str] = []
        if cfg.conditional:
            if arrays.labels is None:
                raise TransferkitError(f"--conditional needs labels: class subfolders, or MNIST with its labels file "
                                       f"({arrays.source} has none).")
            classes = list(arrays.classes)
            if len(np.unique(arrays.labels)) < 2:
                raise TransferkitError(f"--conditional needs at least two classes ({arrays.source} has one).")
            if len(classes) > 200:
                raise TransferkitError(f"--conditional supports up to 200 classes ({arrays.source} has {len(classes)}).")
        train, held = split_rows(len(arrays), cfg.val_fraction, cfg.seed, cfg.max_images)
        x = to_tensor(arrays.images)
        y = torch.as_tensor(arrays.labels if arrays.labels is not None else np.zeros(len(arrays)), dtype=torch.long)
        return Prepared(kind="dcgan", size=size, channels=int(x.shape[1]), classes=classes, x=x, y=y, train=train,
                        held=held, source=arrays.source, n=len(arrays), layout="images",
                        all_classes=list(arrays.classes) if arrays.labels is not None else [])
    pairs = read_pairs(data, size, edges=cfg.edges, direction=cfg.direction)
    train, held = split_rows(len(pairs), cfg.val_fraction, cfg.seed, cfg.max_images)
    a, b = to_tensor(pairs.a), to_tensor(pairs.b)
    return Prepared(kind="pix2pix", size=size, a=a, b=b, in_channels=int(a.shape[1]), out_channels=int(b.shape[1]),
                    train=train, held=held, source=pairs.source, n=len(pairs), layout=pairs.layout, names=pairs.names)


def model_config(cfg: GANConfig, d: Prepared, source: str) -> dict[str, Any]:
    from transferkit.core.backbones import Preprocessing

    pre = Preprocessing(input_size=(3, d.size, d.size), interpolation="bicubic", crop_pct=1.0, crop_mode="squash",
                        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)).to_dict()
    common = {"task": "gan", "kind": cfg.kind, "architecture": cfg.kind, "image_size": d.size, "width": cfg.resolved_width(),
              "class_names": [], "preprocessing": pre, "ema": cfg.ema_decay}
    if d.kind == "dcgan":
        return {**common, "latent": cfg.latent, "channels": d.channels, "blocks": cfg.resolved_blocks(),
                "conditional": bool(cfg.conditional),
                "classes": d.classes, "data": {"source": source, "layout": d.layout, "n": d.n}}
    return {**common, "in_channels": d.in_channels, "out_channels": d.out_channels, "direction": cfg.direction,
            "edges": bool(cfg.edges), "data": {"source": source, "layout": d.layout, "n": d.n}}


# --------------------------------------------------------------------------- fit


def fixed_latents(latent: int, n: int, seed: int, classes: Sequence[str] = ()):
    """The latent points (and labels) of every epoch's grid: the same each time, so progress is visible."""
    import torch

    g = torch.Generator().manual_seed(seed + 12345)
    if classes:
        k = len(classes)
        per = max(1, min(8, n // min(k, 10)))
        shown = list(range(min(k, 10)))
        labels = torch.tensor([c for c in shown for _ in range(per)])
        z = torch.randn(per, latent, generator=g).repeat(len(shown), 1)  # the same z in every row: style vs class
        return z, labels, per
    return torch.randn(n, latent, generator=g), None, 8


def generate(generator, z, labels=None, batch_size: int = 256):
    """Run a generator on z (N, latent) in eval mode -> (N, C, S, S) in [-1, 1]."""
    import torch

    was = generator.training
    generator.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(z), batch_size):
            out.append(generator(z[i : i + batch_size], None if labels is None else labels[i : i + batch_size]))
    generator.train(was)
    return torch.cat(out)


def translate_tensors(generator, a, batch_size: int = 64):
    import torch

    was = generator.training
    generator.eval()
    with torch.inference_mode():
        out = torch.cat([generator(a[i : i + batch_size]) for i in range(0, len(a), batch_size)])
    generator.train(was)
    return out


def fit(cfg: GANConfig, data: str | os.PathLike, out: str | os.PathLike, resume: bool = False) -> Path:
    """Train a DCGAN or pix2pix on DATA and write the run directory ``out``; returns its path."""
    import datetime

    import torch

    from transferkit.core import config as cfgmod
    from transferkit.core import engine
    from transferkit.core.modeldir import atomic_write_text, save_model_dir
    from transferkit.tasks.gan import models
    from transferkit.tasks.gan.data import to_uint8
    from transferkit.tasks.gan.module import DCGANModule, Pix2PixModule
    from transferkit.tasks.gan.pictures import auto_scale, grid, save_png, triplets

    cfg.validate()
    for sentence in cfg.ignored_options():
        print(f"warning: {sentence}.", file=sys.stderr, flush=True)
    d = prepare_data(cfg, data)  # bad data fails before any folder is made
    if len(d.train) < 2:
        raise TransferkitError(f"{d.source} leaves {len(d.train)} training image(s) after the split; give more images.")
    source = _source_id(data, {"kind": cfg.kind, "edges": cfg.edges, "direction": cfg.direction})
    run_dir = engine.prepare_run_dir(out, resume)
    engine.seed_everything(cfg.seed)
    _set_threads(cfg.threads)
    if engine.is_rank_zero():  # DDP: the other ranks make the same seeded split and write nothing
        cfgmod.save(cfg, run_dir / "config.yaml")
        atomic_write_text(run_dir / SPLIT_FILE, json.dumps({"source": source, "n": d.n, "held_out": d.held}))
    mconf = model_config(cfg, d, source)
    epochs = cfg.resolved_epochs()
    scale = auto_scale(d.size)

    width = cfg.resolved_width()
    if d.kind == "dcgan":
        k, blocks = len(d.classes), cfg.resolved_blocks()
        gen = models.DCGANGenerator(cfg.latent, d.channels, d.size, width, k, blocks)
        disc = models.DCGANDiscriminator(d.channels, d.size, width, k, cfg.spectral_norm, blocks)
        module = DCGANModule(gen, disc, cfg.lr, cfg.d_lr, cfg.resolved_beta1(), cfg.resolved_label_smoothing(),
                             cfg.ema_decay, cfg.max_steps, cfg.collapse_steps, loss=cfg.resolved_loss(),
                             augment=cfg.diff_augment, beta2=cfg.beta2)
        ds = torch.utils.data.TensorDataset(d.x[d.train], d.y[d.train])
        z_fixed, y_fixed, per_row = fixed_latents(cfg.latent, N_FIXED, cfg.seed, d.classes)
        held_real = d.x[d.held] if d.held else None
        what = f"{'conditional ' if k else ''}DCGAN, {k} classes" if k else "DCGAN"
        print(f"{what}: {len(d.train)} training images, {len(d.held)} held out, {d.channels}x{d.size}x{d.size}",
              file=sys.stderr, flush=True)
    else:
        gen = models.UNetGenerator(d.in_channels, d.out_channels, d.size, width)
        disc = models.PatchDiscriminator(d.in_channels + d.out_channels, width, models.patch_layers(d.size))
        module = Pix2PixModule(gen, disc, cfg.lr, cfg.d_lr, cfg.resolved_beta1(), cfg.adv_weight, cfg.l1_weight,
                               cfg.resolved_label_smoothing(), cfg.jitter, cfg.ema_decay, cfg.max_steps,
                               cfg.collapse_steps, beta2=cfg.beta2)
        ds = torch.utils.data.TensorDataset(d.a[d.train], d.b[d.train])
        show = d.held[:6] if d.held else d.train[:6]
        held_real = d.b[d.held] if d.held else None
        print(f"pix2pix ({d.layout}, {cfg.direction if not cfg.edges else 'edges -> photo'}): {len(d.train)} training "
              f"pairs, {len(d.held)} held out, {d.in_channels}->{d.out_channels} channels, {d.size}x{d.size}, "
              f"adversarial weight {cfg.adv_weight:g}", file=sys.stderr, flush=True)

    feats = {"net": None, "real": None}
    fid_rows: list[dict[str, float]] = []

    def feature_net():
        if feats["net"] is None:
            from transferkit.tasks.gan.metrics import FeatureNet

            feats["net"] = FeatureNet(cfg.features, cfg.feature_size)
        return feats["net"]

    def fid_now() -> dict[str, Any] | None:
        from transferkit.tasks.gan.metrics import fid_report

        if held_real is None or len(held_real) < 4:
            return None
        fn = feature_net()
        n_real = min(len(held_real), 2 * cfg.fid_samples)
        if feats["real"] is None:
            feats["real"] = fn(held_real[:n_real])
        if d.kind == "dcgan":
            g = torch.Generator().manual_seed(cfg.seed + 777)
            z = torch.randn(n_real // 2, cfg.latent, generator=g)
            lab = torch.randint(0, len(d.classes), (len(z),), generator=g) if d.classes else None
            fake = generate(module.sampler(), z, lab)
        else:
            fake = translate_tensors(module.sampler(), d.a[d.held][:n_real])
            return fid_report(feats["real"], fn(fake), seed=cfg.seed, paired=True)
        return fid_report(feats["real"], fn(fake), seed=cfg.seed)

    def snapshot(name: str) -> Path:
        if d.kind == "dcgan":
            imgs = to_uint8(generate(module.sampler(), z_fixed, y_fixed))
            pic = grid(imgs, ncols=per_row, scale=scale)
        else:
            outs = to_uint8(translate_tensors(module.sampler(), d.a[show]))
            pic = triplets(to_uint8(d.a[show]), outs, to_uint8(d.b[show]), scale=scale)
        return save_png(pic, run_dir / "samples" / name)

    def on_epoch_end(mod, epoch: int) -> None:
        if not engine.is_rank_zero():
            return  # DDP: rank 0 draws the pictures and measures FID
        snapshot(f"epoch_{epoch + 1:03d}.png")
        if cfg.fid_every and (epoch + 1) % cfg.fid_every == 0:
            r = fid_now()
            if r is not None:
                fid_rows.append({"epoch": epoch + 1, "step": mod.gen_steps, "fid": r["fid"], "kid": r["kid"]})
                print(f"epoch {epoch + 1}: FID {r['fid']:.3f} (floor {r['fid_floor']:.3f})", file=sys.stderr, flush=True)

    module.epoch_end_hook = on_epoch_end
    batch = cfg.resolved_batch()
    loader = engine.make_loader(ds, min(batch, len(ds)), shuffle=True, workers=0, in_memory=True,
                                drop_last=len(ds) > batch, seed=cfg.seed)
    extra: dict[str, Any] = {}
    budget = cfg.resolved_time_budget()
    if budget is not None:
        extra["max_time"] = datetime.timedelta(minutes=budget)
    trainer = engine.make_trainer(cfg, run_dir, monitor=None, max_epochs=epochs, partial_backward=True, **extra)
    if engine.is_rank_zero():
        snapshot("epoch_000.png")
    started = time.perf_counter()
    engine.fit(trainer, module, loader, None, run_dir=run_dir, resume=resume)
    if not engine.is_rank_zero():
        return run_dir  # DDP: the other ranks trained alongside; rank 0 evaluates and writes the results
    wall = time.perf_counter() - started

    # the averaged generator's own batch-norm statistics (lower FID for both kinds: BENCHMARKS.md)
    module.recalibrate_ema(seed=cfg.seed, inputs=d.a[d.train] if d.kind == "pix2pix" else None)
    sampler = module.sampler()
    sampler.eval()
    snapshot("final.png")
    _write_steps(run_dir, module.history)
    if fid_rows:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(fid_rows[0]))
        w.writeheader()
        w.writerows(fid_rows)
        atomic_write_text(run_dir / "fid.csv", buf.getvalue())
    results: dict[str, Any] = {"kind": d.kind, "steps": module.gen_steps, "epochs_run": int(trainer.current_epoch),
                               "train_seconds": round(wall, 1), "n_train": len(d.train), "n_held_out": len(d.held),
                               "collapse": module.collapse}
    if cfg.fid:
        r = fid_now()
        if r is not None:
            from transferkit.tasks.gan.metrics import describe

            results.update(r)
            results["features"] = describe(feature_net())
            if d.kind == "pix2pix":
                from transferkit.tasks.gan.metrics import pixel_metrics

                results.update(pixel_metrics(translate_tensors(sampler, d.a[d.held]), d.b[d.held]))
    mconf["training"] = {k: v for k, v in results.items() if k in ("steps", "epochs_run", "n_train", "n_held_out")}
    mconf["training"]["seed"] = cfg.seed
    save_model_dir(sampler, mconf, run_dir / "model")
    atomic_write_text(run_dir / METRICS_FILE, json.dumps(results, indent=2))
    write_report(run_dir, cfg, mconf, results, fid_rows)
    return run_dir


def _write_steps(run_dir: Path, history: list[dict[str, float]]) -> None:
    from transferkit.core.modeldir import atomic_write_text

    if not history:
        return
    keys = list(dict.fromkeys(k for row in history for k in row))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(history)
    path = run_dir / "steps.csv"
    if path.is_file():  # a resumed run: keep the earlier rows
        old = path.read_text()
        if old.splitlines()[:1] == buf.getvalue().splitlines()[:1]:
            atomic_write_text(path, old + "".join(buf.getvalue().splitlines(keepends=True)[1:]))
            return
    atomic_write_text(path, buf.getvalue())


def read_steps(run_dir: Path) -> dict[str, list[float]]:
    path = Path(run_dir) / "steps.csv"
    if not path.is_file():
        return {}
    out: dict[str, list[float]] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            for k, v in row.items():
                if v not in ("", None):
                    out.setdefault(k, []).append(float(v))
    return out


# --------------------------------------------------------------------------- report


def write_report(run_dir: Path, cfg: GANConfig, mconf: dict[str, Any], res: dict[str, Any],
                 fid_rows: Sequence[dict[str, float]]) -> Path:
    from transferkit.core import config as cfgmod
    from transferkit.core.report import Report, plt

    title = "pix2pix image-to-image translation" if cfg.kind == "pix2pix" else (
        "Conditional DCGAN" if mconf.get("conditional") else "DCGAN")
    rep = Report(run_dir, title)
    rows = [["generator steps", res["steps"]], ["training time (s)", res["train_seconds"]],
            ["training images", res["n_train"]], ["held-out images", res["n_held_out"]]]
    if "fid" in res:
        rows += [[f"FID ({res['features']})", res["fid"]], ["FID real vs real (floor)", res["fid_floor"]],
                 ["KID", res["kid"]], ["KID floor", res["kid_floor"]], ["samples per side", res["n_fake"]]]
    for k in ("l1", "psnr", "ssim"):
        if k in res:
            rows.append([f"held-out {k.upper()}", res[k]])
    rep.table(["", "value"], rows, caption="FID/KID on these features are not comparable with Inception-FID figures")
    if res.get("collapse"):
        c = res["collapse"]
        rep.text(f"Warning: the discriminator won (its loss stayed at its minimum for {c['steps']} steps, up to step "
                 f"{c['step']}): the generator got no useful gradient from then on.")
    steps = read_steps(run_dir)
    if steps.get("step"):
        pyplot = plt()
        fig, axes = pyplot.subplots(1, 2, figsize=(11, 3.6))
        x = steps["step"]
        for key in ("loss_d", "loss_g", "l1"):
            if key in steps and len(steps[key]) == len(x):
                axes[0].plot(x, steps[key], label=key, lw=1)
        axes[0].set_xlabel("generator step")
        axes[0].set_ylabel("loss")
        axes[0].legend()
        axes[0].grid(alpha=0.3)
        for key, lab in (("d_x", "D(x): real"), ("d_g_z", "D(G(z)): generated")):
            if key in steps and len(steps[key]) == len(x):
                axes[1].plot(x, steps[key], label=lab, lw=1)
        axes[1].set_ylim(0, 1)
        axes[1].set_xlabel("generator step")
        axes[1].set_ylabel("discriminator output")
        if axes[1].get_legend_handles_labels()[0]:
            axes[1].legend()
        axes[1].grid(alpha=0.3)
        fig.tight_layout()
        rep.figure(fig, "losses.png", "Both networks' losses, and the discriminator's mean output on real and "
                                      "generated images, over training")
    if fid_rows:
        pyplot = plt()
        fig, ax = pyplot.subplots(figsize=(6, 3.4))
        ax.plot([r["epoch"] for r in fid_rows], [r["fid"] for r in fid_rows], marker="o", label="FID")
        if "fid_floor" in res:
            ax.axhline(res["fid_floor"], color="grey", ls="--", label="real vs real floor")
        ax.set_xlabel("epoch")
        ax.set_ylabel("FID")
        ax.legend()
        ax.grid(alpha=0.3)
        rep.figure(fig, "fid.png", "FID on the held-out images over training")
    rep.heading("Samples per epoch" if cfg.kind == "dcgan" else "Held-out input | output | target, per epoch")
    shots = sorted((run_dir / "samples").glob("epoch_*.png"))
    if len(shots) > 12:
        idx = np.unique(np.linspace(0, len(shots) - 1, 12).round().astype(int))
        shots = [shots[i] for i in idx]
    for p in shots:
        n = int(p.stem.split("_")[1])
        rep.image(p, "before training" if n == 0 else f"after epoch {n}")
    if (run_dir / "samples" / "final.png").is_file():
        rep.image(run_dir / "samples" / "final.png", "final model (the EMA generator when --ema is on)")
    rep.config(cfgmod.to_dict(cfg))
    return rep.write()


# --------------------------------------------------------------------------- loading, sampling, translating


def load_gan(run_or_model: Any):
    """(TransferModel, run folder or None) of a GAN run or model directory (or a TransferModel)."""
    from transferkit.core.modeldir import TransferModel, find_model_dir, load

    if isinstance(run_or_model, TransferModel):
        tm, run = run_or_model, None
    else:
        found = find_model_dir(run_or_model)
        if found is None:
            raise TransferkitError(f"{run_or_model} is not a GAN run or model directory (no config.json).")
        tm = load(found)
        run = found.parent if found.name == "model" else None
    if tm.task != "gan":
        raise TransferkitError(f"{run_or_model} holds a {tm.task} model, not a GAN.")
    return tm, run


def _labels_for(config: dict[str, Any], label: Any) -> int:
    classes = list(config.get("classes") or [])
    if str(label) in classes:
        return classes.index(str(label))
    try:
        i = int(label)
    except (TypeError, ValueError):
        i = -1
    if 0 <= i < len(classes):
        return i
    raise TransferkitError(f"Unknown --label {label!r}; this model's classes are {', '.join(classes[:20])}"
                           f"{' ...' if len(classes) > 20 else ''}.")


def sample_images(model: Any, n: int = 64, seed: int = 0, label: Any = None, interpolate: bool = False):
    """Generate with a DCGAN model: uint8 images (N, S, S[, 3]), their labels (or None), and columns per row."""
    import torch

    from transferkit.tasks.gan.data import to_uint8

    tm, _ = load_gan(model)
    c = tm.config
    if c["kind"] != "dcgan":
        raise TransferkitError("This is a pix2pix model; use `transferkit gan translate` for it.")
    if n < 1:
        raise TransferkitError(f"--n must be at least 1 (got {n}).")
    g = torch.Generator().manual_seed(int(seed))
    latent = int(c["latent"])
    classes = list(c.get("classes") or []) if c.get("conditional") else []
    if label is not None and not classes:
        raise TransferkitError("--label needs a conditional model (trained with --conditional).")
    if interpolate:
        n = max(n, 2)
        ends = torch.randn(2, latent, generator=g)
        t = torch.linspace(0, 1, n)[:, None]
        z = (1 - t) * ends[0] + t * ends[1]  # (n, latent) along the straight line between two points
        labels = torch.full((n,), _labels_for(c, label) if label is not None else 0) if classes else None
        ncols = n
    elif classes:
        rows = [_labels_for(c, label)] if label is not None else list(range(len(classes)))
        per = n if label is not None else max(1, n // len(rows)) if n >= len(rows) else 1
        z = torch.randn(per, latent, generator=g).repeat(len(rows), 1)
        labels = torch.tensor([r for r in rows for _ in range(per)])
        ncols = per
    else:
        z = torch.randn(n, latent, generator=g)
        labels = None
        ncols = min(8, n)
    imgs = to_uint8(generate(tm.module, z, labels))
    names = None if labels is None else [classes[int(i)] for i in labels]
    return imgs, names, ncols


def sample(run_dir: Any, n: int = 64, out: str | os.PathLike = "samples.png", seed: int = 0, label: Any = None,
           interpolate: bool = False) -> list[Path]:
    """Write samples: a ``.png`` OUT gets one grid (or the interpolation strip), a folder one PNG per sample."""
    from transferkit.tasks.gan.pictures import auto_scale, grid, save_png

    imgs, _, ncols = sample_images(run_dir, n, seed, label, interpolate)
    out = Path(out)
    if out.suffix.lower() == ".png":
        return [save_png(grid(imgs, ncols=ncols, scale=auto_scale(imgs.shape[1])), out)]
    if out.suffix:
        raise TransferkitError(f"--out must be a .png file or a folder (got {out}).")
    out.mkdir(parents=True, exist_ok=True)
    return [save_png(im, out / f"sample_{i:04d}.png") for i, im in enumerate(imgs)]


def _inputs_for(tm, images: Sequence[Any], sketch: bool = False):
    """Model inputs (N, C, S, S) in [-1, 1] from image files, folders, globs, PIL images or (name, PIL image)
    pairs (what ``transferkit serve`` passes); photos become edges for an edges model unless ``sketch``."""
    from PIL import Image

    from transferkit.core.images import list_images, read_image
    from transferkit.tasks.gan.data import _square, canny_edges, to_tensor

    c = tm.config
    size, cin = int(c["image_size"]), int(c["in_channels"])
    named: list[tuple[Path, Any]] = []
    for item in images:
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], Image.Image):
            named.append((Path(str(item[0])), item[1]))
        elif isinstance(item, Image.Image):
            named.append((Path(f"image{len(named)}"), item))
        else:
            named.extend((p, None) for p in list_images([os.fspath(item)]))
    arrs = []
    for p, img in named:
        img = np.asarray((img if img is not None else read_image(p)).convert("RGB"), dtype=np.uint8)
        img = _square(img, size)
        if c.get("edges") and c.get("direction", "AtoB") == "AtoB" and not sketch:
            img = canny_edges(img)
        arrs.append(img if img.ndim == 3 else np.repeat(img[..., None], 3, -1))
    t = to_tensor(np.stack(arrs))  # (N, 3, S, S)
    if cin == 1:
        t = t.mean(dim=1, keepdim=True)
    return [p for p, _ in named], t


def translate(run_dir: Any, images: Sequence[Any], out: str | os.PathLike, sketch: bool = False) -> list[Path]:
    """pix2pix: translate image files, one PNG per input in OUT (named after the input)."""
    from transferkit.tasks.gan.data import to_uint8
    from transferkit.tasks.gan.pictures import save_png

    tm, _ = load_gan(run_dir)
    if tm.config["kind"] != "pix2pix":
        raise TransferkitError("This is a DCGAN model; use `transferkit gan sample` for it.")
    paths, x = _inputs_for(tm, images, sketch)
    outs = to_uint8(translate_tensors(tm.module, x))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TransferkitError(f"--out {out} is a file; give a folder.")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    used: set[str] = set()
    for p, im in zip(paths, outs):
        name = p.stem
        while name in used:
            name += "_"
        used.add(name)
        written.append(save_png(im, out / f"{name}.png"))
    return written


def predict(model_dir_or_model: Any, inputs: Any = None, n: int = 8, seed: int = 0, label: Any = None,
            out: str | os.PathLike | None = None, sketch: bool = False, **_: Any) -> list[dict[str, Any]]:
    """The serving contract.  DCGAN: ``inputs`` is a count or a list of class labels (conditional models);
    returns one dict per generated image.  pix2pix: ``inputs`` are image paths; one dict per input.
    Each dict holds ``png_base64`` (or ``output``, the PNG path, when ``out`` is a folder)."""
    from transferkit.tasks.gan.data import to_uint8
    from transferkit.tasks.gan.pictures import png_base64, save_png

    tm, _ = load_gan(model_dir_or_model)
    results: list[dict[str, Any]] = []
    if tm.config["kind"] == "dcgan":
        if isinstance(inputs, int):
            groups = [(None, inputs)]
        elif inputs:
            groups = [(lab, 1) for lab in inputs]
        else:
            groups = [(label, n)]
        k = 0
        for lab, count in groups:
            imgs, names, _ = sample_images(tm, count, seed + k, lab)
            for j, im in enumerate(imgs):
                row: dict[str, Any] = {"index": k, "seed": seed}
                if names:
                    row["label"] = names[j]
                if out is not None:
                    row["output"] = str(save_png(im, Path(out) / f"sample_{k:04d}.png"))
                else:
                    row["png_base64"] = png_base64(im)
                results.append(row)
                k += 1
        return results
    if not inputs:
        raise TransferkitError("A pix2pix model needs input images.")
    paths, x = _inputs_for(tm, [inputs] if isinstance(inputs, (str, os.PathLike)) else inputs, sketch)
    outs = to_uint8(translate_tensors(tm.module, x))
    for p, im in zip(paths, outs):
        row = {"path": str(p)}
        if out is not None:
            row["output"] = str(save_png(im, Path(out) / f"{p.stem}.png"))
        else:
            row["png_base64"] = png_base64(im)
        results.append(row)
    return results


# --------------------------------------------------------------------------- eval


def evaluate(run_dir: Any, data: str | os.PathLike, features: str | None = None, feature_size: int | None = None,
             max_images: int | None = 2000, seed: int = 0) -> dict[str, Any]:
    """FID and KID of a GAN on DATA (offline features), the real-versus-real floor, the sample counts, and for
    pix2pix L1 / PSNR / SSIM of the translations against the true targets.

    On the run's own DATA only its held-out rows are used.
    """
    import torch

    from transferkit.tasks.gan.data import read_pairs, read_unpaired, to_tensor
    from transferkit.tasks.gan.metrics import FeatureNet, describe, fid_report, pixel_metrics

    tm, run = load_gan(run_dir)
    c = tm.config
    if run is not None and features is None:
        import yaml

        saved = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
        features = saved.get("features")
        feature_size = feature_size if feature_size is not None else saved.get("feature_size")
    features = features or "efficientnet_lite0"
    size = int(c["image_size"])
    rows = None
    split_file = None if run is None else run / SPLIT_FILE
    if split_file is not None and split_file.is_file():
        split = json.loads(split_file.read_text())
        if split.get("source") == _source_id(data, c):
            rows = split["held_out"]
    if c["kind"] == "dcgan":
        arrays = read_unpaired(data, size, grayscale=int(c["channels"]) == 1)
        if (arrays.channels != int(c["channels"])):
            from transferkit.tasks.gan.data import resize_arrays  # noqa: F401

            raise TransferkitError(f"{data} holds {'grey' if arrays.channels == 1 else 'colour'} images; this model "
                                   f"makes {'grey' if int(c['channels']) == 1 else 'colour'} ones.")
        real = to_tensor(arrays.images if rows is None else arrays.images[rows])
    else:
        pairs = read_pairs(data, size, edges=bool(c.get("edges")), direction=c.get("direction", "AtoB"))
        if pairs.a.ndim != (3 if int(c["in_channels"]) == 1 else 4):
            raise TransferkitError(f"{data} does not give the {c['in_channels']}-channel inputs this model takes.")
        if rows is not None:
            pairs = pairs.subset(rows)
        a, real = to_tensor(pairs.a), to_tensor(pairs.b)
    if len(real) < 4:
        raise TransferkitError(f"{data} gives {len(real)} image(s) to evaluate on; FID needs at least 4.")
    g = torch.Generator().manual_seed(seed)
    if max_images is not None and len(real) > max_images:
        keep = torch.randperm(len(real), generator=g)[:max_images].sort().values
        real = real[keep]
        if c["kind"] == "pix2pix":
            a = a[keep]
    fn = FeatureNet(features, feature_size)
    real_f = fn(real)
    if c["kind"] == "dcgan":
        n_fake = len(real) // 2
        z = torch.randn(n_fake, int(c["latent"]), generator=g)
        k = len(c.get("classes") or []) if c.get("conditional") else 0
        lab = torch.randint(0, k, (n_fake,), generator=g) if k else None
        fake = generate(tm.module, z, lab)
        res = fid_report(real_f, fn(fake), seed)
    else:
        fake = translate_tensors(tm.module, a)
        res = fid_report(real_f, fn(fake), seed, paired=True)
        res.update(pixel_metrics(fake, real))
    res["features"] = describe(fn)
    res["split"] = "held-out" if rows is not None else "all"
    return res
