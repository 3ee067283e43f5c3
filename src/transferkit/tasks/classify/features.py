"""The ``features`` strategy: the pretrained CNN as a fixed feature extractor, then a linear classifier.

1. Penultimate features of every training and validation image, computed
   once through ONNX Runtime and kept in the on-disk cache
   (``core.featcache``); with ``--flip-features`` the mirrored training images
   too (twice the training rows, the cheapest augmentation there is).
2. A linear classifier on standardised features: scikit-learn's logistic
   regression or linear SVM, or a softmax layer trained by Lightning
   (``--head softmax``, which also accepts ``--head-layers``).
3. The scaler becomes the head's Standardize layer, the classifier its
   last linear layer, and the head joins the backbone in a normal
   :class:`~transferkit.tasks.classify.model.Classifier`, so the model
   directory is the same as every other strategy's (predict, features and
   export work on it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from transferkit.errors import TransferkitError


@dataclass
class FeatureFit:
    """What the features strategy produced (the trainer turns it into a model directory and a report)."""

    head_state: dict[str, Any]            # state dict of a Head(F, K, hidden, dropout)
    hidden: tuple[int, ...]
    val_probs: np.ndarray                 # (n_val_ok, K)
    val_ok: list[int]                     # indices into the split's validation files
    train_ok: list[int]
    timings: dict[str, float]
    cache: dict[str, int]
    reg_curve: list[dict[str, float]] = field(default_factory=list)   # logistic/svm: val accuracy per C
    trained_epochs: int = 0
    refit: bool = False                   # head refitted on training + validation images for the saved model
    n_fit_rows: int = 0
    cv: dict[str, Any] | None = None      # cross_validate()'s result, or None


class _Mirrored:
    """The eval transform applied to the mirror image (picklable, for DataLoader workers)."""

    def __init__(self, transform: Any):
        self.transform = transform
        self.accepts_uint8 = bool(getattr(transform, "accepts_uint8", False))

    def __call__(self, img: Any) -> Any:
        from PIL import Image, ImageOps

        if not isinstance(img, Image.Image):  # a (3, H, W) uint8 tensor
            return self.transform(img.flip(-1))
        return self.transform(ImageOps.mirror(img))


def _pooled_model(backbone: Any, architecture: str, preprocessing: Any):
    """A TransferModel whose ``pre_logits`` output is the backbone's pooled features."""
    import torch

    from transferkit.core.modeldir import TransferModel

    class Pooled(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, x):  # (N, C, H, W) -> (N, F)
            return self.inner(x)

        def embed(self, x, layer="pre_logits"):
            return self.inner(x)

    return TransferModel(Pooled(backbone).eval(), {"task": "pretrained", "architecture": architecture,
                                                    "preprocessing": preprocessing.to_dict()})


@dataclass
class SplitFeatures:
    """Features of the readable files of a split (rows in file order; ``*_flip``: mirrored images, or None)."""

    Xtr: np.ndarray
    ytr: np.ndarray
    train_ok: list[int]
    Xva: np.ndarray
    yva: np.ndarray
    val_ok: list[int]
    Xtr_flip: np.ndarray | None
    Xva_flip: np.ndarray | None
    stats: dict[str, int]

    def training_rows(self, with_val: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Rows to fit on: training (+ validation when refitting), plus mirrored rows when extracted."""
        xs, ys = [self.Xtr], [self.ytr]
        if self.Xtr_flip is not None:
            xs.append(self.Xtr_flip)
            ys.append(self.ytr)
        if with_val:
            xs.append(self.Xva)
            ys.append(self.yva)
            if self.Xva_flip is not None:
                xs.append(self.Xva_flip)
                ys.append(self.yva)
        return np.concatenate(xs), np.concatenate(ys)


def extract(split: Any, backbone: Any, architecture: str, preprocessing: Any, cfg: Any, skips: Any) -> SplitFeatures:
    """Cached features of the split's training and validation images (and their mirror images)."""
    from transferkit.core.featcache import extract_cached

    model = _pooled_model(backbone, architecture, preprocessing)
    paths = list(split.train.paths) + list(split.val.paths)
    n_tr = len(split.train.paths)
    device = "cpu" if cfg.device == "cpu" else "auto"
    res = extract_cached(paths, model, cache=cfg.feature_cache, device=device, skips=skips, batch_size=32,
                         desc="features")
    rows = dict(zip(res.ok, res.features))
    ok = sorted(rows)
    train_ok = [i for i in ok if i < n_tr]
    val_ok = [i - n_tr for i in ok if i >= n_tr]
    dim = res.features.shape[1]
    Xtr = np.stack([rows[i] for i in train_ok]) if train_ok else np.zeros((0, dim), np.float32)
    Xva = np.stack([rows[n_tr + i] for i in val_ok]) if val_ok else np.zeros((0, dim), np.float32)
    ytr = np.asarray([split.train.labels[i] for i in train_ok], dtype=int)
    yva = np.asarray([split.val.labels[i] for i in val_ok], dtype=int)
    stats = {"hits": res.hits, "misses": res.misses}
    Xtr_flip = Xva_flip = None
    if cfg.flip_features and ok:
        want = ok if (cfg.refit and cfg.head != "softmax") else train_ok
        flip = extract_cached([paths[i] for i in want], model, cache=cfg.feature_cache, device=device,
                              transform=_Mirrored(preprocessing.transform()), extra_key={"hflip": True},
                              desc="features (mirrored)", runner=res.runner)
        if len(flip.ok) == len(want):  # rows in the same order as the plain ones
            Xtr_flip = flip.features[: len(train_ok)]
            Xva_flip = flip.features[len(train_ok):] if len(want) > len(train_ok) else None
        stats["hits"] += flip.hits
        stats["misses"] += flip.misses
    return SplitFeatures(Xtr, ytr, train_ok, Xva, yva, val_ok, Xtr_flip, Xva_flip, stats)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _as_logit_layer(coef: np.ndarray, intercept: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's (1, F) binary or (K, F) coefficients as a K-way linear layer of logits."""
    coef = np.atleast_2d(coef)
    intercept = np.atleast_1d(intercept)
    if k == 2 and coef.shape[0] == 1:  # sigmoid(z) == softmax([0, z])[1]
        return np.vstack([np.zeros_like(coef), coef]), np.array([0.0, intercept[0]])
    return coef, intercept


def _fit_linear(kind: str, X: np.ndarray, y: np.ndarray, k: int, c: float, balanced: bool, seed: int):
    """Fit logistic regression or a linear SVM; returns (W (K, F), b (K,)) giving logits."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", FutureWarning)
        if kind == "logistic":
            from sklearn.linear_model import LogisticRegression

            clf = LogisticRegression(C=c, max_iter=3000, class_weight="balanced" if balanced else None)
        else:
            from sklearn.svm import LinearSVC

            clf = LinearSVC(C=c, max_iter=20000, class_weight="balanced" if balanced else None, random_state=seed)
        clf.fit(X, y)
    W, b = _as_logit_layer(clf.coef_, clf.intercept_, k)
    if list(clf.classes_) != list(range(k)):  # a class absent from training: put its row where it belongs
        full_W = np.full((k, X.shape[1]), 0.0)
        full_b = np.full(k, -1e4)
        for row, cls in enumerate(clf.classes_):
            full_W[cls], full_b[cls] = W[row], b[row]
        W, b = full_W, full_b
    if kind == "svm":  # margins are not log-odds: fit one temperature on the training rows
        W, b = _temperature(W, b, X, y)
    return W.astype(np.float32), b.astype(np.float32)


def _temperature(W: np.ndarray, b: np.ndarray, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = X @ W.T + b
    best, best_t = np.inf, 1.0
    for t in np.geomspace(0.05, 20, 60):
        p = _softmax(z * t)
        nll = -np.mean(np.log(p[np.arange(len(y)), y] + 1e-12))
        if nll < best:
            best, best_t = nll, t
    return W * best_t, b * best_t


def fit_head(Xtr: np.ndarray, ytr: np.ndarray, Xva: np.ndarray, yva: np.ndarray, k: int, cfg: Any, run_dir: Path,
             resume: bool) -> tuple[dict[str, Any], tuple[int, ...], np.ndarray, list[dict[str, float]], int]:
    """Train the chosen head on features; returns (Head state dict, hidden, val probs, C curve, epochs)."""
    import torch

    from transferkit.tasks.classify.model import Head

    if cfg.head not in ("logistic", "svm"):
        head, probs, epochs = _train_softmax(Xtr, ytr, Xva, yva, k, cfg, run_dir, resume)
        return head.state_dict(), tuple(cfg.head_layers), probs, [], epochs
    if cfg.head_layers:
        raise TransferkitError("--head-layers needs --head softmax (logistic and svm heads are linear).")
    mean = Xtr.mean(axis=0)
    scale = Xtr.std(axis=0)
    scale[scale < 1e-6] = 1.0
    Ztr, Zva = (Xtr - mean) / scale, (Xva - mean) / scale
    W, b = _fit_linear(cfg.head, Ztr, ytr, k, cfg.head_c, cfg.class_weights, cfg.seed)
    curve: list[dict[str, float]] = []
    for c in sorted({*np.geomspace(1e-3, 10, 5).tolist(), cfg.head_c}):
        Wc, bc = (W, b) if c == cfg.head_c else _fit_linear(cfg.head, Ztr, ytr, k, c, cfg.class_weights, cfg.seed)
        p = _softmax(Zva @ Wc.T + bc)
        curve.append({"C": float(c), "val_acc": float((p.argmax(1) == yva).mean()),
                      "val_loss": float(-np.mean(np.log(p[np.arange(len(yva)), yva] + 1e-12)))})
    head = Head(Xtr.shape[1], k).eval()
    head.norm.set_stats(torch.from_numpy(mean.astype(np.float32)), torch.from_numpy(scale.astype(np.float32)))
    with torch.no_grad():  # the scaler is the head's Standardize layer, the classifier its fc layer
        head.fc.weight.copy_(torch.from_numpy(W))
        head.fc.bias.copy_(torch.from_numpy(b))
    return head.state_dict(), (), _softmax(Zva @ W.T + b), curve, 0


def _train_softmax(Xtr, ytr, Xva, yva, k: int, cfg: Any, run_dir: Path, resume: bool):
    """A softmax layer (or small MLP) on the features, trained by the project's Lightning Trainer.

    The head's Standardize layer holds the training features' mean and std.
    """
    import torch

    from transferkit.core import engine
    from transferkit.tasks.classify.model import Classifier
    from transferkit.tasks.classify.module import ClassifierModule, FlushMetrics, drop_lr_monitor

    class FeatureInput(torch.nn.Identity):
        def __init__(self, n: int):
            super().__init__()
            self.num_features = n

    net = Classifier(FeatureInput(Xtr.shape[1]), k, cfg.head_layers, cfg.dropout)
    net.head.norm.set_stats(torch.from_numpy(Xtr.mean(0)), torch.from_numpy(Xtr.std(0)))
    weights = None
    if cfg.class_weights:
        counts = np.bincount(ytr, minlength=k).astype(np.float64)
        weights = torch.tensor(len(ytr) / (k * np.maximum(counts, 1)), dtype=torch.float32)
    module = ClassifierModule(net, cfg, [], weights)
    tr = torch.utils.data.TensorDataset(torch.from_numpy(Xtr.astype(np.float32)), torch.from_numpy(ytr.astype(np.int64)))
    va = torch.utils.data.TensorDataset(torch.from_numpy(Xva.astype(np.float32)), torch.from_numpy(yva.astype(np.int64)))
    train_loader = engine.make_loader(tr, cfg.batch_size, shuffle=True, workers=0, in_memory=True, seed=cfg.seed,
                                      drop_last=len(tr) > cfg.batch_size)
    val_loader = engine.make_loader(va, 256, shuffle=False, workers=0, in_memory=True)
    trainer = drop_lr_monitor(engine.make_trainer(cfg, run_dir, monitor="val_loss", callbacks=[FlushMetrics()],
                                                  log_every_n_steps=1))
    engine.fit(trainer, module, train_loader, val_loader, run_dir=run_dir, resume=resume)
    engine.restore_best(trainer, module)
    net.eval()
    with torch.no_grad():
        probs = torch.softmax(net(va.tensors[0]), dim=1).numpy()
    return net.head, probs, int(trainer.current_epoch)


def _linear_head_state(X: np.ndarray, y: np.ndarray, k: int, cfg: Any) -> dict[str, Any]:
    """Scaler + linear classifier fitted on (X, y), as a Head state dict (used to refit on all images)."""
    import torch

    from transferkit.tasks.classify.model import Head

    mean, scale = X.mean(axis=0), X.std(axis=0)
    scale[scale < 1e-6] = 1.0
    W, b = _fit_linear(cfg.head, (X - mean) / scale, y, k, cfg.head_c, cfg.class_weights, cfg.seed)
    head = Head(X.shape[1], k).eval()
    head.norm.set_stats(torch.from_numpy(mean.astype(np.float32)), torch.from_numpy(scale.astype(np.float32)))
    with torch.no_grad():
        head.fc.weight.copy_(torch.from_numpy(W))
        head.fc.bias.copy_(torch.from_numpy(b))
    return head.state_dict()


def cross_validate(X: np.ndarray, y: np.ndarray, X_flip: np.ndarray | None, k: int, folds: int, repeats: int,
                   head: str, c: float, balanced: bool, seed: int) -> dict[str, Any]:
    """Repeated stratified K-fold cross-validation of the linear head on cached features.

    Each fold standardises and fits on its training rows (plus their mirror
    images' rows when ``X_flip`` is given: never the held-out images' mirrors)
    and scores the held-out rows.  ``folds`` is lowered to the smallest class's
    size when a class has fewer images.

    Returns:
        ``{"mean", "std", "folds", "repeats", "n", "fold_accuracies", "min", "max"}``; ``std`` is the
        standard deviation over all folds (the spread of one fold's estimate).
    """
    from sklearn.model_selection import RepeatedStratifiedKFold

    counts = np.bincount(y, minlength=k)
    folds = int(min(folds, counts[counts > 0].min()))
    if folds < 2:
        raise TransferkitError("Cross-validation needs at least two images of every class.")
    accs: list[float] = []
    splitter = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
    for tr, te in splitter.split(X, y):
        Xtr, ytr = X[tr], y[tr]
        if X_flip is not None:
            Xtr, ytr = np.concatenate([Xtr, X_flip[tr]]), np.concatenate([ytr, y[tr]])
        mean, scale = Xtr.mean(axis=0), Xtr.std(axis=0)
        scale[scale < 1e-6] = 1.0
        W, b = _fit_linear(head, (Xtr - mean) / scale, ytr, k, c, balanced, seed)
        pred = (((X[te] - mean) / scale) @ W.T + b).argmax(1)
        accs.append(float((pred == y[te]).mean()))
    a = np.asarray(accs)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "folds": folds,
            "repeats": repeats, "n": int(len(y)), "fold_accuracies": accs, "min": float(a.min()), "max": float(a.max())}


def run(split: Any, backbone: Any, architecture: str, preprocessing: Any, cfg: Any, run_dir: Path, resume: bool,
        skips: Any) -> FeatureFit:
    """Extract (cached) features, fit the head, and return everything the trainer needs.

    With ``--refit`` (logistic and svm heads), the validation metrics come from
    the head fitted on the training part, and the saved model's head is then
    fitted again on training + validation images (more data, same settings).
    """
    t0 = time.perf_counter()
    sf = extract(split, backbone, architecture, preprocessing, cfg, skips)
    t1 = time.perf_counter()
    if len(set(sf.ytr.tolist())) < 2:
        raise TransferkitError("After skipping unreadable files, the training part has fewer than two classes.")
    if len(sf.val_ok) == 0:
        raise TransferkitError("None of the validation images could be read.")
    k = len(split.train.classes)
    Xtr, ytr = sf.training_rows()
    state, hidden, probs, curve, epochs = fit_head(Xtr, ytr, sf.Xva, sf.yva, k, cfg, run_dir, resume)
    refit = bool(cfg.refit and cfg.head in ("logistic", "svm"))
    if refit:
        state = _linear_head_state(*sf.training_rows(with_val=True), k, cfg)
    t2 = time.perf_counter()
    timings = {"features": t1 - t0, "head": t2 - t1}
    cv = None
    if cfg.cv and cfg.head in ("logistic", "svm"):
        X = np.concatenate([sf.Xtr, sf.Xva])
        y = np.concatenate([sf.ytr, sf.yva])
        flip = None
        if sf.Xtr_flip is not None and sf.Xva_flip is not None:
            flip = np.concatenate([sf.Xtr_flip, sf.Xva_flip])
        try:
            cv = cross_validate(X, y, flip, k, cfg.cv, cfg.cv_repeats, cfg.head, cfg.head_c, cfg.class_weights, cfg.seed)
            timings["cross-validation"] = time.perf_counter() - t2
        except TransferkitError as err:  # e.g. a class left with one readable image: the run itself is still fine
            import sys

            print(f"note: no cross-validation ({err})", file=sys.stderr)
    n_rows = len(sf.training_rows(with_val=True)[1]) if refit else len(ytr)
    return FeatureFit(state, hidden, probs, sf.val_ok, sf.train_ok, timings, sf.stats, curve, epochs, refit, n_rows, cv)
