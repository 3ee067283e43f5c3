"""``report.html`` of a classifier run: curves, learning rates, confusion matrix, most-confused images, config, timings."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np


def step_series(run_dir: Path, keys: tuple[str, ...]) -> dict[str, list[tuple[float, float]]]:
    """Per-step values of ``keys`` from metrics.csv as (fractional epoch, value), for the learning-rate curve."""
    path = run_dir / "metrics.csv"
    out: dict[str, dict[int, tuple[float, float]]] = {k: {} for k in keys}
    if not path.is_file():
        return {}
    rows = list(csv.DictReader(path.open(newline="")))
    steps_per_epoch: dict[int, int] = {}
    for r in rows:
        if r.get("epoch") not in (None, "") and r.get("step") not in (None, ""):
            e, s = int(float(r["epoch"])), int(float(r["step"]))
            steps_per_epoch[e] = max(steps_per_epoch.get(e, 0), s)
    for r in rows:
        for k in keys:
            v = r.get(k)
            if v in (None, "") or r.get("step") in (None, ""):
                continue
            s = int(float(r["step"]))
            e = int(float(r.get("epoch") or 0))
            start = steps_per_epoch.get(e - 1, -1) + 1 if e > 0 else 0
            span = max(1, steps_per_epoch.get(e, s) - start + 1)
            out[k][s] = (e + (s - start) / span, float(v))  # x axis: epochs (0 = start of training)
    return {k: [v[s] for s in sorted(v)] for k, v in out.items() if v}


def _lr_figure(series: dict[str, list[tuple[float, float]]]):
    from transferkit.core.report import plt

    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(6.4, 3.4))
    labels = {"lr_head": "head", "lr_bottom": "bottom stage"}
    for k, pts in series.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=labels.get(k, k))
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def _reg_figure(curve: list[dict[str, float]], chosen: float):
    from transferkit.core.report import plt

    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(6.4, 3.4))
    cs = [c["C"] for c in curve]
    ax.plot(cs, [c["val_acc"] for c in curve], marker="o", label="validation accuracy")
    ax2 = ax.twinx()
    ax2.plot(cs, [c["val_loss"] for c in curve], marker="s", color="tab:orange", label="validation loss")
    ax.axvline(chosen, color="grey", ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("C (inverse regularisation; dashed: the one used)")
    ax.set_ylabel("accuracy")
    ax2.set_ylabel("log loss")
    ax.grid(alpha=0.3)
    lines = ax.get_lines()[:1] + ax2.get_lines()[:1]
    ax.legend(lines, [ln.get_label() for ln in lines], loc="center right", fontsize=8)
    return fig


def _thumb(path: Path, images: Any, i: int, size: int = 160) -> np.ndarray:
    """A small RGB array of validation image ``i`` (from memory when decoded, else from disk)."""
    if images is not None:
        t = images[i]
        arr = t.permute(1, 2, 0).numpy()
        return arr
    from transferkit.core.images import read_image

    try:
        img = read_image(path, draft_size=(size, size))
        img.thumbnail((size, size))
        return np.asarray(img)
    except Exception:  # noqa: BLE001 - a picture is not worth failing the report
        return np.zeros((size, size, 3), np.uint8)


def confused_grid(probs: np.ndarray, labels: np.ndarray, paths: list[Path], images: Any, classes: list[str], n: int = 16):
    """Grid of the validation images the model got most wrong (then its least sure right answers)."""
    from transferkit.core.report import image_grid

    pred = probs.argmax(1)
    conf = probs[np.arange(len(pred)), pred]
    wrong = [i for i in np.argsort(-conf) if pred[i] != labels[i]]
    right = [i for i in np.argsort(conf) if pred[i] == labels[i]]
    pick = (wrong + right)[:n]
    tiles = [_thumb(paths[i], images, i) for i in pick]
    titles = [f"true {classes[labels[i]]}\npred {classes[pred[i]]} {conf[i]:.0%}" for i in pick]
    colours = ["#c62828" if pred[i] != labels[i] else "#2e7d32" for i in pick]
    return image_grid(tiles, titles, ncols=8, size=1.7, title_colors=colours), len(wrong)


def write_report(run_dir: Path, cfg: Any, classes: list[str], split: Any, result: dict[str, Any],
                 metrics: dict[str, Any], timings: dict[str, float]) -> Path:
    """Write ``run_dir/report.html`` (self-contained) and its PNG files."""
    from transferkit.core import config as C
    from transferkit.core.augment import describe
    from transferkit.core.engine import metrics_by_epoch
    from transferkit.core.report import Report, confusion_figure, plot_curves

    rep = Report(run_dir, f"Classifier: {cfg.strategy} strategy, {cfg.backbone}")
    lo, hi = metrics["ci95"]
    rep.text(f"Validation accuracy {metrics['accuracy']:.2%} on {metrics['n']} images, 95% Wilson interval "
             f"{lo:.1%} to {hi:.1%} (macro F1 {metrics['macro_f1']:.3f}); {len(classes)} classes; split: {split.how}.")
    cv = result.get("cv")
    if cv:
        rep.text(f"Cross-validated accuracy: {cv['mean']:.2%} +- {cv['std']:.2%} (mean +- standard deviation over "
                 f"{cv['folds']}-fold stratified cross-validation repeated {cv['repeats']} times on all {cv['n']} "
                 f"labelled images, folds from {cv['min']:.1%} to {cv['max']:.1%}). This is the better estimate of "
                 "accuracy on new images: the single split above holds only {0} images.".format(metrics["n"]))
    if metrics["n"] and (hi - lo) / 2 > 0.03:
        rep.text(f"Note: with {metrics['n']} validation images the 95% interval is {(hi - lo) / 2:.1%} either side; "
                 "strategies or backbones whose accuracies differ by less than that cannot be told apart on this "
                 "split" + (" (compare cross-validated accuracies instead)." if cv else
                            " (the features strategy's --cv K gives a cross-validated estimate)."))
    rows = []
    for name in classes:
        ntr = int(sum(1 for y in split.train.labels if classes[y] == name))
        nva = int(sum(1 for y in split.val.labels if classes[y] == name))
        pc = metrics["per_class"][name]
        rows.append([name, ntr, nva, pc["precision"], pc["recall"], pc["f1"]])
    rep.table(["class", "train images", "val images", "precision", "recall", "F1"], rows, "Per-class results on validation")

    hist = metrics_by_epoch(run_dir)
    if hist.get("train_loss") or hist.get("val_loss"):
        rep.heading("Training curves")
        rep.figure(plot_curves(hist, ["train_loss", "val_loss"], "Loss", "cross-entropy"), "loss.png", "Loss per epoch")
        rep.figure(plot_curves(hist, ["train_acc", "val_acc"], "Accuracy", "accuracy"), "accuracy.png", "Accuracy per epoch")
        series = step_series(run_dir, ("lr_head", "lr_bottom"))
        if series:
            rep.figure(_lr_figure(series), "lr.png", "Learning rate per step (head and bottom backbone stage)")
    if result.get("reg_curve"):
        rep.heading("Regularisation")
        rep.figure(_reg_figure(result["reg_curve"], cfg.head_c), "regularisation.png",
                   f"{cfg.head} head: validation accuracy and loss against C")

    rep.heading("Confusion matrix")
    rep.figure(confusion_figure(np.asarray(metrics["confusion_matrix"]), classes, "Validation confusion matrix"),
               "confusion.png", "Rows: true class; columns: predicted class")
    fig, n_wrong = confused_grid(np.asarray(result["val_probs"]), np.asarray(result["val_labels"]),
                                 list(result["val_paths"]), result.get("val_images"), classes)
    rep.heading("Most confused validation images")
    rep.figure(fig, "confused.png", f"{n_wrong} wrong (red, most confident first), then the least confident right answers (green)")

    if result.get("groups"):
        rep.heading("Parameter groups")
        rep.table(["group (bottom to top)", "parameters", "peak learning rate"],
                  [[g, n, lr] for g, n, lr in result["groups"]])
    if cfg.strategy != "features" and result.get("train_images") is not None and getattr(result["train_images"], "images", None):
        from transferkit.core.augment import preview_grid

        imgs = getattr(result["train_images"], "images", None) or []
        pil = [_to_pil(t) for t in imgs[:4]]
        rep.heading("Augmentation")
        rep.text("Training augmentation: " + ", ".join(describe(cfg)) + ".")
        rep.figure(preview_grid(pil, cfg, 160, per_image=6, seed=cfg.seed), "augmentation.png",
                   "Each row: one training image, then random augmented versions")
    rep.heading("Timings")
    rep.table(["step", "seconds"], [[k, float(v)] for k, v in timings.items()])
    if result.get("cache"):
        rep.text(f"Feature cache: {result['cache']['hits']} rows reused, {result['cache']['misses']} computed.")
    if result.get("refit"):
        rep.text("The validation results above come from the head fitted on the training part; the saved model's head "
                 "was then fitted again, with the same settings, on training + validation images.")
    rep.config(C.to_dict(cfg), "Configuration (config.yaml)")
    return rep.write()


def _to_pil(t: Any):
    from PIL import Image

    return Image.fromarray(t.permute(1, 2, 0).numpy())
