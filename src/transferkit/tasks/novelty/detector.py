"""Novelty detection: learn normal images, calibrate a threshold on held-out normal ones, score new images.

Two scores, higher = more novel:

* ``reconstruction``: mean squared error per pixel of an autoencoder trained
  on the normal images only (what it never saw, it reconstructs badly);
* ``embedding``: 1 - mean cosine similarity to the ``neighbours`` nearest
  normal images, in a pretrained backbone's (or an autoencoder's) embedding space.

The threshold is the chosen percentile (default 99th) of the scores of normal
images held out from training, so about 1% of normal images are flagged.

A run folder holds ``novelty.json`` (method, threshold, classes), ``split.json``
(rows of DATA used for training and calibration), ``config.yaml``,
``report.html``, and ``autoencoder/`` (a full autoencoder run) or ``index/``
(the normal images' embeddings).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from transferkit.core.datasets import ArrayData
from transferkit.errors import TransferkitError
from transferkit.tasks.novelty.config import NoveltyConfig

STATE_FILE = "novelty.json"
SPLIT_FILE = "split.json"
NOVEL_NAMES = ("novel", "anomaly", "anomalous", "abnormal", "outlier", "defect", "bad")


# --------------------------------------------------------------------------- scores


def reconstruction_scores(module: Any, images: np.ndarray, batch: int = 512) -> np.ndarray:
    """Per-image reconstruction MSE of uint8 images (N, H, W[, 3]) through an autoencoder."""
    import torch

    from transferkit.tasks.autoencoder.data import to_float

    x = to_float(images)
    out = []
    module.eval()
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            xb = x[i:i + batch]
            out.append(((module(xb) - xb) ** 2).flatten(1).mean(dim=1))
    return torch.cat(out).numpy().astype(np.float64)


def embedding_scores(index: Any, vectors: np.ndarray, k: int, exclude_self: bool = False) -> np.ndarray:
    """1 - mean cosine similarity to the k nearest indexed (normal) vectors."""
    sims, _ = index.search(vectors, k + (1 if exclude_self else 0))
    if exclude_self:
        sims = sims[:, 1:]
    return (1.0 - sims.mean(axis=1)).astype(np.float64)


# --------------------------------------------------------------------------- reading data


def _read(data: str | os.PathLike | ArrayData, cfg: NoveltyConfig | None = None, model_config: dict | None = None) -> ArrayData:
    from transferkit.tasks.autoencoder.data import read_data

    if model_config is not None:
        from transferkit.tasks.autoencoder.train import arrays_for

        return arrays_for(model_config, data)
    assert cfg is not None
    return read_data(data, cfg.size, cfg.grayscale)


def _class_rows(arrays: ArrayData, classes: Sequence[str], where: str) -> np.ndarray:
    """Boolean mask of rows whose class name is in ``classes`` (unknown names are an error)."""
    if arrays.labels is None:
        raise TransferkitError(f"{where} has no labels, so --normal-classes cannot pick from it.")
    known = list(arrays.classes)
    missing = [c for c in classes if c not in known]
    if missing:
        raise TransferkitError(f"{where} has no class {', '.join(missing)} (classes: {', '.join(known)}).")
    ids = [known.index(c) for c in classes]
    return np.isin(arrays.labels, ids)


def _array_names(data: str | os.PathLike | ArrayData, n: int) -> list[str]:
    from transferkit.tasks.autoencoder.data import source_id

    prefix = "digits" if source_id(data) == "digits" else "row"
    return [f"{prefix}:{i}" for i in range(n)]


# --------------------------------------------------------------------------- fit


def fit(cfg: NoveltyConfig, data: str | os.PathLike | ArrayData, out: str | os.PathLike) -> Path:
    """Learn the normal images of DATA (its ``normal_classes``, or all) and calibrate the threshold."""
    from transferkit.core import config as cfgmod
    from transferkit.core import engine
    from transferkit.core.modeldir import atomic_write_text
    from transferkit.tasks.autoencoder.data import source_id

    cfg.validate()
    run_dir = engine.prepare_run_dir(out, resume=False)
    arrays = _read(data, cfg)
    source = source_id(data)
    if cfg.normal_classes:
        normal = np.flatnonzero(_class_rows(arrays, cfg.normal_classes, source))
    else:
        normal = np.arange(len(arrays))
    if len(normal) < 4:
        raise TransferkitError(f"{source} has {len(normal)} normal image(s); at least 4 are needed to learn and calibrate.")
    cfgmod.save(cfg, run_dir / "config.yaml")
    normal_data = ArrayData(arrays.images[normal], None if arrays.labels is None else arrays.labels[normal],
                            arrays.classes, f"{source}#normal")
    from transferkit.tasks.autoencoder.data import make_split

    split = make_split(normal_data, cfg.val_fraction, cfg.seed, cfg.max_images)
    train_rows, calib_rows = normal[split.train], normal[split.held_out]
    print(f"novelty ({cfg.method}): {len(train_rows)} normal training images, {len(calib_rows)} held out to calibrate",
          file=sys.stderr, flush=True)

    state: dict[str, Any] = {"method": cfg.method, "percentile": cfg.percentile, "source": source,
                             "normal_classes": list(cfg.normal_classes), "classes": list(arrays.classes),
                             "n_train": int(len(train_rows)), "n_calibration": int(len(calib_rows))}
    if cfg.method == "reconstruction":
        from dataclasses import fields

        from transferkit.tasks.autoencoder.config import AEConfig
        from transferkit.tasks.autoencoder.train import fit as ae_fit

        ae_cfg = AEConfig(**{f.name: getattr(cfg, f.name) for f in fields(AEConfig)})
        ae_cfg.max_images = None  # the subset was taken above
        # the autoencoder trains on the training rows and validates on the calibration rows
        subset = ArrayData(arrays.images[np.concatenate([train_rows, calib_rows])], None, arrays.classes,
                           f"{source}#normal")
        n_tr = len(train_rows)
        ae_dir = ae_fit(ae_cfg, subset, run_dir / "autoencoder",
                        split=(list(range(n_tr)), list(range(n_tr, len(subset)))))
        from transferkit.core.modeldir import load

        module = load(ae_dir / "model").module
        calib_scores = reconstruction_scores(module, arrays.images[calib_rows])
        train_scores = reconstruction_scores(module, arrays.images[train_rows])
        state["autoencoder"] = "autoencoder"
    else:
        from transferkit.tasks.index.embed import embed_arrays, l2_normalise, load_model
        from transferkit.tasks.index.store import Index, choose_backend

        tm, kind, identity = load_model(cfg.model)
        names = _array_names(data, len(arrays))
        rows = np.concatenate([train_rows, calib_rows])
        emb = embed_arrays(arrays.images[rows], [names[i] for i in rows], tm)
        vecs = l2_normalise(emb.features)
        tr_v, ca_v = vecs[: len(train_rows)], vecs[len(train_rows):]
        index = Index(tr_v, [names[i] for i in train_rows],
                      {"model": identity, "model_kind": kind, "backend": choose_backend(len(tr_v)), "source": source,
                       "data_kind": "arrays", "classes": list(arrays.classes), "engine": "auto"})
        index.save(run_dir / "index")
        k = min(cfg.neighbours, len(train_rows))
        calib_scores = embedding_scores(index, ca_v, k)
        train_scores = embedding_scores(index, tr_v, min(k, len(train_rows) - 1) or 1, exclude_self=len(train_rows) > 1)
        state.update(index="index", neighbours=k, model=identity)
    threshold = float(np.percentile(calib_scores, cfg.percentile))
    state.update(threshold=threshold, data={"size": list(arrays.images.shape[1:3]), "channels": arrays.channels},
                 calibration={"mean": float(calib_scores.mean()), "median": float(np.median(calib_scores)),
                              "max": float(calib_scores.max()), "flagged": float((calib_scores > threshold).mean())})
    atomic_write_text(run_dir / STATE_FILE, json.dumps(state, indent=2))
    atomic_write_text(run_dir / SPLIT_FILE, json.dumps(
        {"source": source, "n": len(arrays), "train": train_rows.tolist(), "calibration": calib_rows.tolist()}))
    _fit_report(run_dir, cfg, state, train_scores, calib_scores)
    return run_dir


def _fit_report(run_dir: Path, cfg: NoveltyConfig, state: dict[str, Any], train_scores: np.ndarray,
                calib_scores: np.ndarray) -> Path:
    from transferkit.core import config as cfgmod
    from transferkit.core.report import Report

    rep = Report(run_dir, f"Novelty detector ({cfg.method})")
    rep.table(["", "value"], [
        ["method", cfg.method], ["threshold", state["threshold"]], ["percentile", cfg.percentile],
        ["normal training images", state["n_train"]], ["held-out normal images", state["n_calibration"]],
        ["held-out normal flagged", f"{state['calibration']['flagged']:.1%}"],
    ])
    rep.figure(score_histogram({"normal (training)": train_scores, "normal (held out)": calib_scores},
                               state["threshold"]), "scores.png", "Scores of normal images and the threshold")
    if state.get("autoencoder"):
        rep.text("The autoencoder's own report: autoencoder/report.html")
    rep.config(cfgmod.to_dict(cfg))
    return rep.write()


def score_histogram(groups: dict[str, np.ndarray], threshold: float):
    """Overlaid histograms of score groups with the threshold as a vertical line."""
    from transferkit.core.report import plt

    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(6.4, 3.8))
    allv = np.concatenate([v for v in groups.values() if len(v)])
    bins = np.linspace(allv.min(), max(allv.max(), threshold), 40)
    for name, v in groups.items():
        if len(v):
            ax.hist(v, bins=bins, alpha=0.55, density=True, label=f"{name} ({len(v)})")
    ax.axvline(threshold, color="black", ls="--", label=f"threshold {threshold:.4g}")
    ax.set_xlabel("novelty score")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- score and evaluate


class Detector:
    """A fitted novelty detector, loaded from its run folder."""

    def __init__(self, run_dir: str | os.PathLike):
        run_dir = Path(run_dir)
        path = run_dir / STATE_FILE
        if not path.is_file():
            raise TransferkitError(f"{run_dir} is not a novelty run (no {STATE_FILE}); make one with `transferkit novelty fit`.")
        self.run_dir = run_dir
        self.state = json.loads(path.read_text(encoding="utf-8"))
        self.threshold = float(self.state["threshold"])
        self.method = self.state["method"]
        self._module = self._index = self._tm = None
        self._model_config: dict[str, Any] | None = None

    def _load(self) -> None:
        if self.method == "reconstruction" and self._module is None:
            from transferkit.core.modeldir import load

            tm = load(self.run_dir / self.state["autoencoder"] / "model")
            self._module, self._model_config = tm.module, tm.config
        if self.method == "embedding" and self._index is None:
            from transferkit.tasks.index.ops import model_of
            from transferkit.tasks.index.store import Index

            self._index = Index.load(self.run_dir / self.state["index"])
            self._tm = model_of(self._index)

    def score_arrays(self, images: np.ndarray, names: Sequence[str] | None = None) -> np.ndarray:
        """Scores of uint8 images shaped like the training data."""
        self._load()
        if self.method == "reconstruction":
            return reconstruction_scores(self._module, images)
        from transferkit.tasks.index.embed import embed_arrays, l2_normalise

        names = list(names) if names is not None else [str(i) for i in range(len(images))]
        vecs = l2_normalise(embed_arrays(images, names, self._tm).features)
        return embedding_scores(self._index, vecs, int(self.state["neighbours"]))

    def score_files(self, paths: Sequence[str | os.PathLike], strict: bool = False) -> tuple[np.ndarray, list[str]]:
        """Scores of image files (read as the training images were); returns (scores, names kept)."""
        self._load()
        if self.method == "reconstruction":
            from transferkit.tasks.autoencoder.data import read_files

            d = self._model_config["data"]
            images, names = read_files(paths, d["size"], int(d["channels"]), strict=strict)
            return reconstruction_scores(self._module, images), names
        from transferkit.tasks.index.embed import embed_files, l2_normalise

        emb = embed_files(paths, self._tm, strict=strict)
        return embedding_scores(self._index, l2_normalise(emb.features), int(self.state["neighbours"])), emb.names

    def read(self, data: str | os.PathLike | ArrayData) -> ArrayData:
        """DATA read the way the training data was read."""
        from transferkit.tasks.autoencoder.data import read_data

        self._load()
        if self._model_config is not None:
            return _read(data, model_config=self._model_config)
        d = self.state["data"]
        return read_data(data, d["size"], grayscale=int(d["channels"]) == 1)


def score(run_dir: str | os.PathLike, paths: Sequence[str | os.PathLike], strict: bool = False) -> list[dict[str, Any]]:
    """``{"path", "score", "novel"}`` per readable image (novel = score above the threshold)."""
    from transferkit.core.images import list_images

    det = Detector(run_dir)
    files = list_images(paths)
    if not files:
        raise TransferkitError("No images given to score.")
    scores, names = det.score_files(files, strict=strict)
    return [{"path": n, "score": float(s), "novel": bool(s > det.threshold)} for n, s in zip(names, scores)]


def evaluate(run_dir: str | os.PathLike, data: str | os.PathLike | ArrayData,
             normal_classes: Sequence[str] | None = None, plot: str | os.PathLike | None = None) -> dict[str, Any]:
    """ROC-AUC and the threshold's rates on labelled DATA (which classes are normal: see below).

    Normal classes: ``normal_classes`` if given, else those recorded at fit
    time, else a class named ``normal`` (the rest novel).  On the fit's own
    DATA the training images are left out (held-out normal + all novel).
    """
    from sklearn.metrics import roc_auc_score

    from transferkit.tasks.autoencoder.data import source_id

    det = Detector(run_dir)
    arrays = det.read(data)
    where = source_id(data)
    if arrays.labels is None:
        raise TransferkitError(f"{where} has no labels; eval needs labelled normal and novel images "
                               "(class folders, e.g. normal/ and novel/, digits or MNIST).")
    classes = list(normal_classes or det.state.get("normal_classes") or [])
    if not classes:
        if "normal" in arrays.classes:
            classes = ["normal"]
        else:
            raise TransferkitError(f"Say which classes of {where} are normal with --normal-classes "
                                   f"(classes: {', '.join(arrays.classes)}).")
    is_normal = _class_rows(arrays, classes, where)
    rows = np.arange(len(arrays))
    left_out = 0
    split_file = det.run_dir / SPLIT_FILE
    if split_file.is_file():
        info = json.loads(split_file.read_text(encoding="utf-8"))
        if info.get("source") == where and int(info.get("n", -1)) == len(arrays):
            train = np.asarray(info["train"], dtype=int)
            keep = np.ones(len(arrays), dtype=bool)
            keep[train] = False
            rows, left_out = np.flatnonzero(keep), len(train)
    y_novel = ~is_normal[rows]
    if y_novel.all() or (~y_novel).all():
        raise TransferkitError(f"{where} needs both normal ({', '.join(classes)}) and novel images to measure ROC-AUC.")
    scores = det.score_arrays(arrays.images[rows], [f"row:{i}" for i in rows])
    flagged = scores > det.threshold
    res = {
        "roc_auc": float(roc_auc_score(y_novel, scores)),
        "threshold": det.threshold,
        "novel_flagged": float(flagged[y_novel].mean()),  # true positive rate at the threshold
        "normal_flagged": float(flagged[~y_novel].mean()),  # false positive rate at the threshold
        "accuracy": float((flagged == y_novel).mean()),
        "n_normal": int((~y_novel).sum()),
        "n_novel": int(y_novel.sum()),
        "normal_classes": classes,
        "training_images_left_out": left_out,
    }
    if plot is not None:
        import io

        from transferkit.core.modeldir import atomic_write_bytes
        from transferkit.core.report import plt

        fig = score_histogram({"normal": scores[~y_novel], "novel": scores[y_novel]}, det.threshold)
        fig.axes[0].set_title(f"ROC-AUC {res['roc_auc']:.3f}")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt().close(fig)
        atomic_write_bytes(plot, buf.getvalue())
    return res
