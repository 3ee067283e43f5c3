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
from dataclasses import dataclass
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


@dataclass
class Items:
    """DATA as rows: uint8 images in memory (digits, MNIST, or a folder read at a fixed size), or image files.

    The embedding method reads image folders as files, so a pretrained backbone
    sees the photos at its own resolution, not a small resized copy.
    """

    labels: np.ndarray | None
    classes: list[str]
    source: str
    images: np.ndarray | None = None
    paths: list[str] | None = None

    def __len__(self) -> int:
        return len(self.images) if self.images is not None else len(self.paths or [])

    def names(self, rows: Sequence[int]) -> list[str]:
        if self.paths is not None:
            return [self.paths[i] for i in rows]
        prefix = "digits" if self.source == "digits" else "row"
        return [f"{prefix}:{i}" for i in rows]


def read_items(data: str | os.PathLike | ArrayData, as_files: bool, size: Sequence[int] = (32, 32),
               grayscale: bool = False, model_config: dict | None = None) -> Items:
    """Read DATA; image folders as files when ``as_files`` (class subfolders become labels)."""
    from transferkit.core.datasets import scan_class_folders
    from transferkit.core.images import list_images
    from transferkit.tasks.autoencoder.data import read_data, source_id
    from transferkit.tasks.index.embed import is_array_data

    source = source_id(data)
    if as_files and not isinstance(data, ArrayData) and not is_array_data(os.fspath(data)):
        folder = Path(os.fspath(data))
        if not folder.is_dir():
            raise TransferkitError(f"No such folder: {folder} (use 'digits' for the embedded data set).")
        subdirs = [d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")]
        if subdirs:
            lf = scan_class_folders(folder)
            paths, labels, classes = [str(p.resolve()) for p in lf.paths], np.asarray(lf.labels), list(lf.classes)
        else:
            paths, labels, classes = [str(p.resolve()) for p in list_images([folder])], None, []
        if not paths:
            raise TransferkitError(f"No images found in {folder}.")
        return Items(labels, classes, source, paths=paths)
    if model_config is not None:
        from transferkit.tasks.autoencoder.train import arrays_for

        arrays = arrays_for(model_config, data)
    else:
        arrays = read_data(data, size, grayscale)
    return Items(arrays.labels, list(arrays.classes), source, images=arrays.images)


def _class_rows(items: Items, classes: Sequence[str], where: str) -> np.ndarray:
    """Boolean mask of rows whose class name is in ``classes`` (unknown names are an error)."""
    if items.labels is None:
        raise TransferkitError(f"{where} has no labels (no class subfolders), so normal classes cannot be picked from it.")
    known = list(items.classes)
    missing = [c for c in classes if c not in known]
    if missing:
        raise TransferkitError(f"{where} has no class {', '.join(missing)} (classes: {', '.join(known)}).")
    return np.isin(items.labels, [known.index(c) for c in classes])


def embed_rows(items: Items, rows: np.ndarray, tm: Any, strict: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Unit embeddings of ``rows`` of DATA and the rows that worked (unreadable files are left out)."""
    from transferkit.tasks.index.embed import embed_arrays, embed_files, l2_normalise

    rows = np.asarray(rows, dtype=int)
    if items.images is not None:
        emb = embed_arrays(items.images[rows], items.names(rows), tm)
        return l2_normalise(emb.features), rows
    emb = embed_files(items.names(rows), tm, strict=strict)
    where = {p: r for p, r in zip(items.names(rows), rows)}
    return l2_normalise(emb.features), np.asarray([where[n] for n in emb.names], dtype=int)


# --------------------------------------------------------------------------- fit


def fit(cfg: NoveltyConfig, data: str | os.PathLike | ArrayData, out: str | os.PathLike) -> Path:
    """Learn the normal images of DATA (its ``normal_classes``, or all) and calibrate the threshold."""
    from transferkit.core import config as cfgmod
    from transferkit.core import engine
    from transferkit.core.modeldir import atomic_write_text
    from transferkit.tasks.autoencoder.data import make_split

    cfg.validate()
    items = read_items(data, cfg.method == "embedding", cfg.size, cfg.grayscale)
    source = items.source
    if cfg.normal_classes:
        normal = np.flatnonzero(_class_rows(items, cfg.normal_classes, source))
    else:
        normal = np.arange(len(items))
    if len(normal) < 4:
        raise TransferkitError(f"{source} has {len(normal)} normal image(s); at least 4 are needed to learn and calibrate.")
    run_dir = engine.prepare_run_dir(out, resume=False)
    if engine.is_rank_zero():  # DDP (reconstruction): rank 0 writes the run folder
        cfgmod.save(cfg, run_dir / "config.yaml")
    # split the normal rows (stratified by class when there are labels); `images` only sizes the split
    normal_part = ArrayData(np.zeros((len(normal), 1, 1), np.uint8),
                            None if items.labels is None else items.labels[normal], items.classes, source)
    split = make_split(normal_part, cfg.val_fraction, cfg.seed, cfg.max_images)
    train_rows, calib_rows = normal[split.train], normal[split.held_out]
    print(f"novelty ({cfg.method}): {len(train_rows)} normal training images, {len(calib_rows)} held out to calibrate",
          file=sys.stderr, flush=True)

    state: dict[str, Any] = {"method": cfg.method, "percentile": cfg.percentile, "source": source,
                             "normal_classes": list(cfg.normal_classes), "classes": list(items.classes),
                             "data_kind": "arrays" if items.images is not None else "files"}
    if cfg.method == "reconstruction":
        from dataclasses import fields

        from transferkit.core.modeldir import load
        from transferkit.tasks.autoencoder.config import AEConfig
        from transferkit.tasks.autoencoder.train import fit as ae_fit

        ae_cfg = AEConfig(**{f.name: getattr(cfg, f.name) for f in fields(AEConfig)})
        ae_cfg.max_images = None  # the subset was taken above
        # the autoencoder trains on the training rows and validates on the calibration rows
        subset = ArrayData(items.images[np.concatenate([train_rows, calib_rows])], None, items.classes,
                           f"{source}#normal")
        n_tr = len(train_rows)
        ae_dir = ae_fit(ae_cfg, subset, run_dir / "autoencoder",
                        split=(list(range(n_tr)), list(range(n_tr, len(subset)))))
        if not engine.is_rank_zero():
            return run_dir  # DDP: the other ranks trained the autoencoder alongside; rank 0 calibrates and writes
        module = load(ae_dir / "model").module
        calib_scores = reconstruction_scores(module, items.images[calib_rows])
        train_scores = reconstruction_scores(module, items.images[train_rows])
        state["autoencoder"] = "autoencoder"
    else:
        from transferkit.tasks.index.embed import load_model
        from transferkit.tasks.index.store import Index, choose_backend

        tm, kind, identity = load_model(cfg.model)
        tr_v, train_rows = embed_rows(items, train_rows, tm)
        ca_v, calib_rows = embed_rows(items, calib_rows, tm)
        if len(train_rows) < 2 or len(calib_rows) < 1:
            raise TransferkitError(f"Too few readable normal images in {source} to learn and calibrate.")
        index = Index(tr_v, items.names(train_rows),
                      {"model": identity, "model_kind": kind, "backend": choose_backend(len(tr_v)), "source": source,
                       "data_kind": state["data_kind"], "classes": list(items.classes), "engine": "auto"})
        index.save(run_dir / "index")
        k = min(cfg.neighbours, len(train_rows) - 1)
        calib_scores = embedding_scores(index, ca_v, k)
        train_scores = embedding_scores(index, tr_v, k, exclude_self=True)
        state.update(index="index", neighbours=k, model=identity)
    threshold = float(np.percentile(calib_scores, cfg.percentile))
    state.update(n_train=int(len(train_rows)), n_calibration=int(len(calib_rows)), threshold=threshold,
                 calibration={"mean": float(calib_scores.mean()), "median": float(np.median(calib_scores)),
                              "max": float(calib_scores.max()), "flagged": float((calib_scores > threshold).mean())})
    atomic_write_text(run_dir / STATE_FILE, json.dumps(state, indent=2))
    atomic_write_text(run_dir / SPLIT_FILE, json.dumps(
        {"source": source, "n": len(items), "train": train_rows.tolist(), "calibration": calib_rows.tolist()}))
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
        self._module = self._index = self._tm = self._ae = None
        self._model_config: dict[str, Any] | None = None

    def load(self) -> "Detector":
        """Load the network (and index) now rather than at the first score; returns the detector."""
        if self.method == "reconstruction" and self._module is None:
            from transferkit.core.modeldir import load

            tm = load(self.run_dir / self.state["autoencoder"] / "model")
            self._ae, self._module, self._model_config = tm, tm.module, tm.config
        if self.method == "embedding" and self._index is None:
            from transferkit.tasks.index.ops import model_of
            from transferkit.tasks.index.store import Index

            self._index = Index.load(self.run_dir / self.state["index"])
            self._tm = model_of(self._index)
        return self

    @property
    def autoencoder(self) -> Any:
        """The ``reconstruction`` method's autoencoder (a loaded TransferModel); None for ``embedding``."""
        return self.load()._ae

    @property
    def embedding_model(self) -> Any:
        """The ``embedding`` method's network (a loaded TransferModel) that embeds images; None for ``reconstruction``."""
        return self.load()._tm

    @property
    def index(self) -> Any:
        """The ``embedding`` method's index of normal images; None for ``reconstruction``."""
        return self.load()._index

    def score_embeddings(self, vectors: np.ndarray) -> np.ndarray:
        """Scores of L2-normalised embeddings from :attr:`embedding_model` (1 - mean cosine similarity to the
        nearest normal images); novel where above :attr:`threshold`."""
        if self.method != "embedding":
            raise TransferkitError(f"{self.run_dir} scores by reconstruction, not by embedding.")
        return embedding_scores(self.index, vectors, int(self.state["neighbours"]))

    def score_rows(self, items: Items, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores of ``rows`` of DATA read by :meth:`read`, and the rows scored (unreadable files left out)."""
        self.load()
        rows = np.asarray(rows, dtype=int)
        if self.method == "reconstruction":
            return reconstruction_scores(self._module, items.images[rows]), rows
        vecs, kept = embed_rows(items, rows, self._tm)
        return embedding_scores(self._index, vecs, int(self.state["neighbours"])), kept

    def score_files(self, paths: Sequence[str | os.PathLike], strict: bool = False) -> tuple[np.ndarray, list[str]]:
        """Scores of image files (read as the training images were); returns (scores, names kept)."""
        self.load()
        if self.method == "reconstruction":
            from transferkit.tasks.autoencoder.data import read_files

            d = self._model_config["data"]
            images, names = read_files(paths, d["size"], int(d["channels"]), strict=strict)
            return reconstruction_scores(self._module, images), names
        from transferkit.tasks.index.embed import embed_files, l2_normalise

        emb = embed_files(paths, self._tm, strict=strict)
        return embedding_scores(self._index, l2_normalise(emb.features), int(self.state["neighbours"])), emb.names

    def read(self, data: str | os.PathLike | ArrayData) -> Items:
        """DATA read the way the training data was read."""
        self.load()
        if self.method == "reconstruction":
            return read_items(data, False, model_config=self._model_config)
        return read_items(data, True)


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

    det = Detector(run_dir)
    items = det.read(data)
    where = items.source
    if items.labels is None:
        raise TransferkitError(f"{where} has no labels; eval needs labelled normal and novel images "
                               "(class folders, e.g. normal/ and novel/, digits or MNIST).")
    classes = list(normal_classes or det.state.get("normal_classes") or [])
    if not classes:
        if "normal" in items.classes:
            classes = ["normal"]
        else:
            raise TransferkitError(f"Say which classes of {where} are normal with --normal-classes "
                                   f"(classes: {', '.join(items.classes)}).")
    is_normal = _class_rows(items, classes, where)
    rows = np.arange(len(items))
    left_out = 0
    split_file = det.run_dir / SPLIT_FILE
    if split_file.is_file():
        info = json.loads(split_file.read_text(encoding="utf-8"))
        if info.get("source") == where and int(info.get("n", -1)) == len(items):
            train = np.asarray(info["train"], dtype=int)
            keep = np.ones(len(items), dtype=bool)
            keep[train] = False
            rows, left_out = np.flatnonzero(keep), len(train)
    if is_normal[rows].all() or (~is_normal[rows]).all():
        raise TransferkitError(f"{where} needs both normal ({', '.join(classes)}) and novel images to measure ROC-AUC.")
    scores, rows = det.score_rows(items, rows)
    y_novel = ~is_normal[rows]
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
