"""``fit``: one classifier run, from a data folder to a run directory.

A run directory holds::

    config.yaml        the resolved ClassifyConfig (``--config`` reproduces the run)
    split.json         how train/validation were split, and the file lists
    checkpoints/       last.ckpt every epoch, best.ckpt on validation loss (trained strategies)
    metrics.csv        per-epoch (and per-step learning-rate) metrics
    summary.json       validation accuracy, per-class metrics, timings
    report.html        curves, confusion matrix, most-confused images, config, timings (+ its PNGs)
    model/             the final model directory (config.json + model.safetensors)

``transferkit predict --model RUN_DIR`` uses ``model/`` directly, with the class names.
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
from transferkit.tasks.classify.config import ClassifyConfig


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _counts_line(name: str, labels: list[int], classes: list[str]) -> str:
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=len(classes)) if labels else np.zeros(len(classes), int)
    return f"{name}: " + ", ".join(f"{c} {n}" for c, n in zip(classes, counts))


def resolve_preprocessing(pre: Any, cfg: ClassifyConfig, in_chans: int = 3):
    """The weights' preprocessing, with ``--image-size`` applied; a plain one for from-scratch networks."""
    from transferkit.core.backbones import Preprocessing

    if pre is None:
        size = cfg.image_size or 224
        return Preprocessing(input_size=(in_chans, size, size), interpolation="bilinear", crop_pct=0.875)
    if cfg.image_size:
        return dataclasses.replace(pre, input_size=(pre.input_size[0], cfg.image_size, cfg.image_size))
    return pre


def _architecture(module: Any, name: str) -> str:
    cfg = getattr(module, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture") or name.split(".")[0])


def _class_weights(labels: list[int], k: int):
    import torch

    counts = np.bincount(np.asarray(labels), minlength=k).astype(np.float64)
    return torch.tensor(len(labels) / (k * np.maximum(counts, 1)), dtype=torch.float32)


def fit(cfg: ClassifyConfig, data: str | os.PathLike, out: str | os.PathLike, resume: bool = False) -> Path:
    """Train a classifier on ``data`` (class folders, train/+val/, or a CSV) into the run directory ``out``.

    Returns the run directory.  Bad input (no images, one class, a class with
    fewer than two images, an existing run without ``resume``) raises
    :class:`TransferkitError` before any training.
    """
    from transferkit.core import config as C
    from transferkit.core import engine
    from transferkit.core.datasets import imbalance_note, load_labelled
    from transferkit.core.images import SkipLog
    from transferkit.core.modeldir import atomic_write_text

    t_start = time.perf_counter()
    cfg.validate()
    split = load_labelled(data, cfg.val_fraction, cfg.seed)  # all data errors come before touching the run folder
    if not resume and Path(out).is_dir() and any(Path(out).iterdir()):
        engine.prepare_run_dir(out, resume)  # refuses at once, before the backbone is loaded
    classes = list(split.train.classes)
    _say(_counts_line("train", split.train.labels, classes))
    _say(_counts_line("val", split.val.labels, classes) + f"  ({split.how})")
    note = imbalance_note(split.train)
    if note:
        _say(f"note: {note}" if not cfg.class_weights else f"note: {note.split(';')[0]}; --class-weights is on")
    split_record = {"how": split.how, "classes": classes,
                    "train": [str(p) for p in split.train.paths], "val": [str(p) for p in split.val.paths]}
    engine.seed_everything(cfg.seed)

    from transferkit.core.freezing import backbone_stages, resolve_freeze_to
    from transferkit.tasks.classify.model import backbone_kind, create_backbone

    t0 = time.perf_counter()
    backbone, pre = create_backbone(cfg.backbone, cfg.weights)
    pre = resolve_preprocessing(pre, cfg)
    arch = _architecture(backbone, cfg.backbone)
    kind = backbone_kind(cfg.backbone)
    if cfg.strategy == "freeze":
        resolve_freeze_to(cfg.freeze_to, len(backbone_stages(backbone)))  # a bad --freeze-to fails before the run folder exists
    timings = {"load backbone": time.perf_counter() - t0}
    run_dir = engine.prepare_run_dir(out, resume)
    if resume and (run_dir / "split.json").is_file():
        old = json.loads((run_dir / "split.json").read_text())
        if old.get("train") != split_record["train"] or old.get("val") != split_record["val"]:
            _say("warning: the data differ from the interrupted run's split; resuming anyway")
    if engine.is_rank_zero():  # DDP: the other ranks compute the same seeded split and write nothing
        C.save(cfg, run_dir / "config.yaml")
        atomic_write_text(run_dir / "split.json", json.dumps(split_record, indent=1))
    skips = SkipLog()
    if cfg.strategy == "features":
        result = _fit_features(cfg, split, backbone, arch, pre, run_dir, resume, skips)
    else:
        result = _fit_trained(cfg, split, backbone, pre, run_dir, resume, skips)
    if result.get("rank", 0) != 0:  # DDP: only the first process writes the model and the report
        return run_dir
    timings.update(result["timings"])
    net = result["net"]

    val_labels = np.asarray(result["val_labels"])
    probs = result["val_probs"]
    from transferkit.tasks.classify.evaluation import metrics_from_probs

    metrics = metrics_from_probs(probs, val_labels, classes)
    training = {
        "strategy": cfg.strategy, "backbone": cfg.backbone, "weights": cfg.weights, "data": str(data),
        "split": split.how, "val_accuracy": metrics["accuracy"], "epochs": result.get("epochs", 0),
        "val_ci95": metrics["ci95"],
        "cv_accuracy": ({k: result["cv"][k] for k in ("mean", "std", "folds", "repeats", "n")} if result.get("cv") else None),
    }
    mconf = {
        "task": "classify",
        "architecture": arch,
        "backbone_kind": kind,
        "num_classes": len(classes),
        "class_names": classes,
        "preprocessing": pre.to_dict(),
        "head_layers": list(result["hidden"]),
        "dropout": float(cfg.dropout if result["hidden"] else 0.0),
        "training": training,
    }
    from transferkit.core.modeldir import save_model_dir

    save_model_dir(net, mconf, run_dir / "model")
    timings["total"] = time.perf_counter() - t_start
    summary = {"val_accuracy": metrics["accuracy"], "n_val": metrics["n"], "per_class": metrics["per_class"],
               "confusion_matrix": metrics["confusion_matrix"], "classes": classes, "strategy": cfg.strategy,
               "timings": timings, "epochs": result.get("epochs", 0), "feature_cache": result.get("cache"),
               "val_ci95": metrics["ci95"], "cv": result.get("cv")}
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))

    from transferkit.tasks.classify.report import write_report

    write_report(run_dir, cfg, classes, split, result, metrics, timings)
    lo, hi = metrics["ci95"]
    cv = result.get("cv")
    cv_text = (f"; {cv['folds']}-fold cross-validation x{cv['repeats']} on all {cv['n']} images: "
               f"{cv['mean']:.4f} +- {cv['std']:.4f}") if cv else ""
    _say(f"validation accuracy {metrics['accuracy']:.4f} on {metrics['n']} images (95% CI {lo:.3f}-{hi:.3f}){cv_text}; "
         f"model in {run_dir / 'model'}, report in {run_dir / 'report.html'} ({timings['total']:.1f} s)")
    return run_dir


# --------------------------------------------------------------------------- strategies


def _fit_features(cfg, split, backbone, arch, pre, run_dir, resume, skips) -> dict[str, Any]:
    from transferkit.tasks.classify import features
    from transferkit.tasks.classify.model import Classifier

    ff = features.run(split, backbone, arch, pre, cfg, run_dir, resume, skips)
    if skips.summary():
        _say(f"warning: {skips.summary()}")
    net = Classifier(backbone, len(split.train.classes), ff.hidden, cfg.dropout if ff.hidden else 0.0)
    net.head.load_state_dict(ff.head_state)
    net.eval()
    _say(f"features: {ff.cache['hits']} from the cache, {ff.cache['misses']} computed "
         f"({ff.timings['features']:.1f} s); head {cfg.head} fitted in {ff.timings['head']:.1f} s"
         + (f"; saved head refitted on training + validation ({ff.n_fit_rows} rows)" if ff.refit else ""))
    return {
        "net": net, "hidden": ff.hidden, "val_probs": ff.val_probs,
        "val_labels": [split.val.labels[i] for i in ff.val_ok],
        "val_paths": [split.val.paths[i] for i in ff.val_ok], "val_images": None,
        "timings": ff.timings, "cache": ff.cache, "reg_curve": ff.reg_curve, "epochs": ff.trained_epochs,
        "n_train": len(ff.train_ok), "groups": [], "refit": ff.refit, "cv": ff.cv,
    }


def _fit_trained(cfg, split, backbone, pre, run_dir, resume, skips) -> dict[str, Any]:
    import torch

    from transferkit.core import engine, freezing
    from transferkit.core.augment import eval_transform, train_transform
    from transferkit.tasks.classify.data import prepare
    from transferkit.tasks.classify.data import FileImages, MemoryImages
    from transferkit.tasks.classify.model import Classifier, init_standardize
    from transferkit.tasks.classify.module import ClassifierModule, FlushMetrics, drop_lr_monitor

    size = tuple(pre.input_size[1:])
    short = pre.resize_size
    train_tf = train_transform(cfg, size, pre.mean, pre.std, channels=pre.input_size[0], resize_size=short,
                               interpolation="bilinear")
    val_tf = eval_transform(size, pre.mean, pre.std, resize_size=short)
    prep = prepare(split, train_tf, val_tf, short, pre.interpolation, in_memory=cfg.cache_images, skips=skips)
    k = len(split.train.classes)
    if len(set(prep.train_labels)) < 2:
        raise TransferkitError("After skipping unreadable files, the training part has fewer than two classes.")
    net = Classifier(backbone, k, cfg.head_layers, cfg.dropout)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    stages = freezing.backbone_stages(net.backbone)
    weights = _class_weights(prep.train_labels, k) if cfg.class_weights else None
    module = ClassifierModule(net, cfg, stages, weights)
    workers = cfg.workers if cfg.workers is not None else 0
    train_loader = engine.make_loader(prep.train, cfg.batch_size, shuffle=True, workers=workers, in_memory=True,
                                      drop_last=len(prep.train) > cfg.batch_size, seed=cfg.seed)
    val_loader = engine.make_loader(prep.val, max(cfg.batch_size, 64), shuffle=False, workers=workers, in_memory=True)
    t_std = time.perf_counter()
    if not resume:  # a resumed run reads these statistics from its checkpoint
        if cfg.cache_images:
            plain = MemoryImages(prep.train.images, prep.train_labels, val_tf)
        else:
            plain = FileImages(prep.train_paths, prep.train_labels, val_tf, short, pre.interpolation)
        loader = engine.make_loader(plain, 64, shuffle=True, workers=workers, in_memory=True, seed=cfg.seed)
        init_standardize(net, loader, cfg.channels_last, max_batches=8)  # up to 512 images are plenty for a mean
    t_std = time.perf_counter() - t_std
    groups = [(name, n, lr) for name, n, lr in freezing.describe_groups(module.param_groups())]
    _say(f"{cfg.strategy}: {len(stages)} backbone stages, {module.frozen_stages(0)} frozen at the start; "
         f"learning rates {groups[0][2]:.2g} (bottom) .. {groups[-1][2]:.2g} (head)")
    steps = max(1, len(train_loader))
    trainer = drop_lr_monitor(engine.make_trainer(cfg, run_dir, monitor="val_loss", callbacks=[FlushMetrics()],
                                                  log_every_n_steps=max(1, min(10, steps // 4))))  # a few lr points per epoch
    t0 = time.perf_counter()
    engine.fit(trainer, module, train_loader, val_loader, run_dir=run_dir, resume=resume)
    t_train = time.perf_counter() - t0
    best = engine.restore_best(trainer, module)
    freezing.unfreeze_all(net)
    net.eval()
    probs = []
    with torch.inference_mode():
        for x, _ in val_loader:
            probs.append(torch.softmax(net(x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x).float(), 1))
    val_probs = torch.cat(probs).numpy()
    net = net.to(memory_format=torch.contiguous_format)
    return {
        "net": net, "hidden": tuple(cfg.head_layers), "val_probs": val_probs, "val_labels": prep.val_labels,
        "val_paths": prep.val_paths, "val_images": prep.val_images,
        "timings": {"decode images": prep.decode_seconds, "feature statistics": t_std, "train": t_train},
        "epochs": int(trainer.current_epoch), "best_checkpoint": best, "n_train": len(prep.train),
        "rank": int(trainer.global_rank),
        "groups": groups, "stages": [s.name for s in stages], "train_tf": train_tf, "train_images": prep.train,
    }
