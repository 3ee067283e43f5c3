"""``fit``: one Siamese run, from a data folder (or Omniglot zip) to a run directory.

A run directory holds::

    config.yaml        the resolved SiameseConfig (``--config`` reproduces the run)
    checkpoints/       last.ckpt every epoch, best.ckpt on held-out one-shot accuracy
    metrics.csv        per-epoch loss, validation accuracy, learning rate, epoch time
    summary.json       validation accuracy, threshold, steps, timings
    report.html        curves, distance histograms + threshold, ROC, ranked episodes (+ PNGs)
    model/             the model directory (config.json + model.safetensors)

The classes are split, not the images: ``--val-classes`` of them are held
out and never trained on.  They give the per-epoch N-way one-shot accuracy
(best checkpoint), a first verification threshold (EER on their same /
different pairs, replaced by ``siamese calibrate``), and the report's pictures.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.errors import TransferkitError
from transferkit.tasks.siamese.config import SiameseConfig

SMALL_CNN_SIZE = 52


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units."""
    x = images.astype(np.float32) / 255.0
    axes = (0, 1, 2)
    if x.ndim == 3:
        return [float(x.mean())], [max(float(x.std()), 1e-3)]
    return [float(v) for v in x.mean(axis=axes)], [max(float(v), 1e-3) for v in x.std(axis=axes)]


def fit(cfg: SiameseConfig, data: str | os.PathLike, out: str | os.PathLike, resume: bool = False) -> Path:
    """Train a Siamese network on ``data`` into the run directory ``out``; returns the run directory.

    Bad input (no images, fewer than two classes with two images, an existing
    run without ``resume``) raises :class:`TransferkitError` before any training.
    """
    import torch

    from transferkit.core import config as C
    from transferkit.core import engine, freezing
    from transferkit.core.backbones import Preprocessing
    from transferkit.core.modeldir import atomic_write_text, save_model_dir
    from transferkit.core.registry import is_arch
    from transferkit.tasks.siamese.data import (
        ClassBatchSampler, TrainImages, check_trainable, identity_collate, load_image_set, split_classes)
    from transferkit.tasks.siamese.episodes import sample_episodes
    from transferkit.tasks.siamese.losses import make_objective
    from transferkit.tasks.siamese.model import SMALL_CNN, SiameseNet, make_encoder
    from transferkit.tasks.siamese.module import SiameseModule, val_loader

    t_start = time.perf_counter()
    cfg.validate()
    engine.seed_everything(cfg.seed)
    scratch = cfg.encoder == SMALL_CNN or is_arch(cfg.encoder)
    if scratch and cfg.freeze_to not in (0, None):
        raise TransferkitError(f"--freeze-to applies to pretrained encoders; {cfg.encoder} is trained from scratch.")

    # ---- encoder and data (a pretrained encoder's weights decide the input size); all errors before the run folder
    if scratch:
        size = cfg.image_size or (SMALL_CNN_SIZE if cfg.encoder == SMALL_CNN else 32)
        data_set = load_image_set(data, size, cfg.grey, cfg.crop_ink)
        check_trainable(data_set, str(data))
        in_chans = 1 if data_set.grey else 3
        encoder, pre = make_encoder(cfg.encoder, in_chans, size, cfg.embedding, cfg.width)
    else:
        encoder, pre = make_encoder(cfg.encoder, 3, 0, cfg.embedding, weights=cfg.weights)
        size = cfg.image_size or int(pre.input_size[-1])
        data_set = load_image_set(data, size, cfg.grey, cfg.crop_ink)
        check_trainable(data_set, str(data))
        in_chans = 3
    grey = data_set.grey
    if cfg.crop_ink and not data_set.ink_cropped:
        _say("warning: --crop-ink applies to grey drawings; these images are colour, so they are read whole")
    rotations = data_set.kind == "omniglot" if cfg.rotations is None else cfg.rotations
    train_c, val_c = split_classes(data_set, cfg.val_classes, cfg.seed)
    train = data_set.subset_classes(train_c)
    val = data_set.subset_classes(val_c) if val_c else None

    run_dir = engine.prepare_run_dir(out, resume)
    if engine.is_rank_zero():  # DDP: rank 0 writes the run folder
        C.save(cfg, run_dir / "config.yaml")
    if scratch:
        mean, std = _channel_stats(train.images)
        if in_chans == 3 and len(mean) == 1:
            mean, std = mean * 3, std * 3
    else:
        mean, std = list(pre.mean), list(pre.std)
    head = "pair" if cfg.loss == "pair" else "metric"
    net = SiameseNet(encoder, cfg.embedding, head, in_chans, mean, std)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)

    stages, frozen = [], 0
    if not scratch:
        stages = freezing.backbone_stages(net.encoder)
        frozen = freezing.resolve_freeze_to(cfg.freeze_to, len(stages))

    val_eps = []
    if val is not None:
        way = min(cfg.val_way, len(val.classes))
        val_eps = sample_episodes(val.labels, range(len(val.classes)), way, 1, 1, 200, seed=cfg.seed)
    objective = make_objective(cfg.loss, cfg.resolved_margin(), cfg.mining, cfg.temperature)
    module = SiameseModule(net, objective, cfg, val_eps, stages, frozen)

    ds = TrainImages(train.images, train.labels, rotations, cfg.mirror)
    alphabets = [train.group_of(c) for c in train.classes]  # None for class folders: no grouping
    sampler = ClassBatchSampler(ds, cfg.batch_size // cfg.per_class, cfg.per_class, cfg.steps_per_epoch, cfg.seed,
                                groups=alphabets if all(alphabets) else None, groups_per_batch=cfg.alphabets_per_batch)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=identity_collate, num_workers=0)
    vloader = val_loader(val.images) if val is not None else None
    monitor = "val_acc" if val_eps else None
    callbacks = []
    if cfg.ema > 0:
        from lightning.pytorch.callbacks import EMAWeightAveraging

        callbacks.append(EMAWeightAveraging(decay=cfg.ema, update_starting_at_step=cfg.warmup_steps))
    trainer = engine.make_trainer(cfg, run_dir, monitor=monitor, mode="max", log_prefix="siamese ", callbacks=callbacks,
                                  use_distributed_sampler=False)  # ClassBatchSampler draws per rank itself
    n_train = len(train.classes) * ds.views
    views = (" x4 rotations" if rotations else "") + (" x2 mirror" if cfg.mirror else "")
    _say(f"training {cfg.encoder} ({cfg.loss} loss, {cfg.embedding}-d) on {len(train)} images of {len(train.classes)} "
         f"classes{views} = {n_train} classes; {len(val_c)} classes held out; "
         f"{size}x{size} {'grey' if grey else 'colour'}{', cropped to the ink' if data_set.ink_cropped else ''}; "
         f"up to {cfg.epochs} x {cfg.steps_per_epoch} steps"
         + (f" or {cfg.time_budget:g} min" if cfg.time_budget else ""))
    t_train = time.perf_counter()
    engine.fit(trainer, module, loader, vloader, run_dir=run_dir, resume=resume)
    train_seconds = time.perf_counter() - t_train
    if not engine.is_rank_zero():
        return run_dir  # DDP: the other ranks trained alongside; rank 0 evaluates and writes the results
    best_path = engine.restore_best(trainer, module) if monitor else None
    net = module.net.eval()

    # ---- held-out classes: threshold (EER) and pictures
    from transferkit.tasks.siamese.thresholds import choose_threshold
    from transferkit.tasks.siamese.matching import Matching
    from transferkit.tasks.siamese.oneshot import embed_views, pair_distances
    from transferkit.tasks.siamese.report import distance_histogram, episodes_figure, roc_figure, save_figure, write_report

    # one-shot matching as eval will use it (the pair head keeps its learned distance)
    matching = Matching(center=module.center, align=cfg.align_views, local=cfg.resolved_local_match()) \
        if head == "metric" else Matching()
    verification: dict[str, Any] = {}
    val_acc = None
    pictures: list[tuple[str, str]] = []
    if val is not None:
        from transferkit.tasks.siamese.episodes import episode_accuracies, episode_predictions

        views = embed_views(net, val.images, tta=cfg.tta, ranges=module.ranges, maps=matching.local > 0)
        val_acc = float(episode_accuracies(net.cdist, views, val_eps, matching=matching).mean())
        d_same, d_diff = pair_distances(net, views.mean(), val.labels, 2000, cfg.seed)
        if len(d_same) and len(d_diff):
            cal = choose_threshold(d_same, d_diff)
            verification = {**cal.to_dict(), "source": f"held-out training classes ({len(val.classes)})",
                            "classes": len(val.classes)}
            save_figure(distance_histogram(d_same, d_diff, cal.threshold, "Held-out classes: pair distances"),
                        run_dir / "distances.png")
            save_figure(roc_figure(d_same, d_diff, cal), run_dir / "roc.png")
            pictures += [("distances.png", "Distances of same-class and different-class pairs of held-out classes, "
                                           "with the equal-error-rate threshold."),
                         ("roc.png", "ROC of verification on held-out classes.")]
        rows = []
        for ep in val_eps[:6]:
            pred, d = episode_predictions(net.cdist, views, ep, matching=matching)
            q = 0  # first query of the episode
            order = np.argsort(d[q])
            sign = 1.0 if matching.plain else -1.0  # show distances, or the match scores themselves
            rows.append((int(ep.query[q, 0]), [int(ep.support[k, 0]) for k in order],
                         [sign * float(d[q, k]) for k in order], int(np.flatnonzero(order == q)[0])))
        if rows:
            measure = "distance" if matching.plain else "match score"
            save_figure(episodes_figure(val.images, rows, measure=measure), run_dir / "episodes.png")
            pictures.append(("episodes.png", f"{val_eps[0].support.shape[0]}-way one-shot episodes of held-out classes: "
                                             f"each query beside its support set ranked by {measure}."))

    # ---- the model directory
    groups = sorted({data_set.group_of(c) for c in data_set.classes} - {None})
    model_config = {
        "task": "siamese",
        "architecture": cfg.encoder,
        "num_classes": 0,
        "class_names": list(data_set.classes),
        # what `transferkit predict/features --model RUN` feed: RGB pixels in [0, 1] (the network normalises,
        # and averages RGB back to grey for a grey model); siamese commands read grey images directly
        "preprocessing": Preprocessing(input_size=(3, size, size), interpolation="bilinear", crop_pct=1.0,
                                       crop_mode="squash", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)).to_dict(),
        "siamese": {"loss": cfg.loss, "head": head, "embedding": cfg.embedding, "in_chans": in_chans,
                    "width": cfg.width, "grey": grey, "ink": data_set.ink_cropped, "tta": cfg.tta, "center": module.center,
                    "align": matching.align, "local": matching.local,
                    "augment": dataclasses.asdict(module.ranges), "mean": mean, "std": std, "margin": cfg.resolved_margin(),
                    "distance": "-log p(same) of Koch's head" if head == "pair" else "Euclidean between unit embeddings"},
        "verification": verification,
        "training": {"data": str(data), "kind": data_set.kind, "alphabets": groups,
                     "train_classes": [data_set.classes[c] for c in train_c],
                     "val_classes": [data_set.classes[c] for c in val_c], "rotations": rotations, "mirror": cfg.mirror,
                     "val_acc": val_acc, "steps": int(trainer.global_step), "train_seconds": round(train_seconds, 1),
                     "best_checkpoint": Path(best_path).name if best_path else None},
    }
    save_model_dir(net, model_config, run_dir / "model")

    summary = {
        "encoder": cfg.encoder, "loss": cfg.loss, "embedding": cfg.embedding, "image_size": size,
        "train_classes": len(train.classes), "held_out_classes": len(val_c), "rotations": rotations, "mirror": cfg.mirror,
        "steps": int(trainer.global_step), "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "val_way": val_eps[0].support.shape[0] if val_eps else None, "val_acc": val_acc,
        "threshold": verification.get("threshold"), "val_eer": verification.get("eer"),
    }
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
    write_report(run_dir, f"Siamese network: {cfg.encoder}, {cfg.loss} loss", engine.metrics_by_epoch(run_dir), summary,
                 C.to_dict(cfg), pictures)
    msg = f"done in {summary['total_seconds']:.0f} s ({summary['steps']} steps)"
    if val_acc is not None:
        msg += f"; held-out {summary['val_way']}-way one-shot accuracy {val_acc:.1%}"
    if verification:
        msg += f"; threshold {verification['threshold']:.4g} (EER {verification['eer']:.1%})"
    _say(msg + f"; model in {run_dir / 'model'}, report {run_dir / 'report.html'}")
    return run_dir
