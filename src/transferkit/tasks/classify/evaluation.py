"""``evaluate``: accuracy, per-class precision/recall/F1 and the confusion matrix of a trained classifier."""

from __future__ import annotations

import os
import sys
from typing import Any, Sequence

import numpy as np

from transferkit.errors import TransferkitError


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of an accuracy of ``correct`` out of ``n`` (``(0, 1)`` when n is 0).

    Unlike the normal approximation it stays inside [0, 1] and is not a
    zero-width interval at 100%: 49/49 gives (0.927, 1.0).
    """
    if n <= 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def metrics_from_probs(probs: np.ndarray, labels: Sequence[int], classes: Sequence[str]) -> dict[str, Any]:
    """``{"accuracy", "ci95", "per_class": {name: {precision, recall, f1, support}}, "n", "confusion_matrix", "classes", "macro_f1"}``.

    ``ci95`` is the 95% Wilson interval of the accuracy (:func:`wilson_interval`).

    Rows of the confusion matrix are true classes, columns predictions.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y = np.asarray(labels, dtype=int)
    pred = np.asarray(probs).argmax(axis=1) if len(y) else np.zeros(0, int)
    k = len(classes)
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=list(range(k)), zero_division=0)
    per_class = {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, name in enumerate(classes)
    }
    present = [i for i in range(k) if s[i] > 0]
    correct = int((pred == y).sum()) if len(y) else 0
    return {
        "accuracy": float((pred == y).mean()) if len(y) else 0.0,
        "ci95": list(wilson_interval(correct, len(y))),
        "per_class": per_class,
        "n": int(len(y)),
        "macro_f1": float(np.mean([f[i] for i in present])) if present else 0.0,
        "confusion_matrix": confusion_matrix(y, pred, labels=list(range(k))).tolist(),
        "classes": list(classes),
    }


def read_eval_data(data: str | os.PathLike, classes: Sequence[str]):
    """Labelled files to evaluate on: class folders (or DATA/val/), or a CSV; labels must be known classes."""
    from transferkit.core.datasets import labelled_source, read_csv_labels, scan_class_folders

    data = labelled_source(data)
    if data.is_file():
        files = read_csv_labels(data, classes=list(classes))
    else:
        folder = data / "val" if (data / "val").is_dir() and (data / "train").is_dir() else data
        files = scan_class_folders(folder, classes=list(classes))
    if len(files) == 0:
        raise TransferkitError(f"No images found in {data}.")
    return files


def evaluate(run_dir: str | os.PathLike, data: str | os.PathLike, batch_size: int = 32, device: str = "auto",
             engine: str = "auto", workers: int | None = None, strict: bool = False) -> dict[str, Any]:
    """Evaluate the model of ``run_dir`` (a run or model directory) on labelled images.

    Returns :func:`metrics_from_probs`'s dictionary plus ``skipped`` (unreadable files) and
    ``predictions`` (path, true, predicted, probability) for the report or further analysis.
    """
    from transferkit.api import load
    from transferkit.core.images import SkipLog
    from transferkit.core.inference import OutputHead, Runner, draft_for, iter_batches
    from transferkit.core.progress import Progress

    from transferkit.core.modeldir import read_config

    config = read_config(run_dir)  # check the data against the class names before loading the network
    classes = list(config.get("class_names") or [])
    if not classes:
        raise TransferkitError(f"{run_dir} holds a {config['task']} model without class names; it cannot be evaluated as a classifier.")
    files = read_eval_data(data, classes)
    tm = load(run_dir)
    pre = tm.preprocessing
    runner = Runner(OutputHead.make(tm.module, "probs"), pre.input_size, device=device, engine=engine)
    skips = SkipLog(strict=strict)
    rows: dict[int, np.ndarray] = {}
    with Progress(len(files), "evaluate", unit="img") as bar:
        for idx, batch in iter_batches(files.paths, pre.transform(), batch_size, workers, skips, draft_for(pre)):
            for i, p in zip(idx, runner(batch)):
                rows[i] = p
            bar.update(len(idx))
    if skips.summary():
        print(f"warning: {skips.summary()}", file=sys.stderr)
    if not rows:
        raise TransferkitError("None of the images could be read.")
    ok = sorted(rows)
    probs = np.stack([rows[i] for i in ok])
    labels = [files.labels[i] for i in ok]
    out = metrics_from_probs(probs, labels, classes)
    out["skipped"] = len(skips.skipped)
    pred = probs.argmax(1)
    out["predictions"] = [
        {"path": str(files.paths[i]), "true": classes[t], "pred": classes[int(p)], "prob": float(pr[int(p)])}
        for i, t, p, pr in zip(ok, labels, pred, probs)
    ]
    return out
