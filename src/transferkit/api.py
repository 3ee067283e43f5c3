"""The Python API; the CLI is a thin layer over these functions.

>>> import transferkit
>>> model = transferkit.load("efficientnet_lite0")          # pretrained, offline
>>> transferkit.predict(["cat.jpg"], model=model, top_k=3)   # [{"path": ..., "top": [...]}]
>>> fs = transferkit.features(["photos/"], out="f.npz")      # FeatureSet, saved as .npz
>>> model.save("my_model"); transferkit.load("my_model")     # model directory round trip
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from transferkit.core.backbones import DEFAULT_MODEL
from transferkit.core.images import SkipLog, list_images, sample_images
from transferkit.core.modeldir import TransferModel, atomic_write_bytes, find_model_dir
from transferkit.errors import TransferkitError

Inputs = Sequence[str | os.PathLike] | str | os.PathLike


def load(model: str | os.PathLike | TransferModel = DEFAULT_MODEL, weights: str | os.PathLike | None = None) -> TransferModel:
    """A model from a model directory (or run directory), or pretrained weights by name.

    Args:
        model: a model directory, a run directory holding ``model/``, a
            registered weight name or any timm architecture.
        weights: explicit weights file for a named architecture.
    """
    from transferkit.core import backbones, modeldir

    if isinstance(model, TransferModel):
        return model
    if find_model_dir(model) is not None:
        if weights is not None:
            raise TransferkitError("--weights applies to a named architecture, not to a model directory.")
        return modeldir.load(model)
    text = os.fspath(model)
    if Path(text).exists() or os.sep in text:
        raise TransferkitError(f"{text} is not a transferkit model directory (no config.json) and not a model name.")
    return backbones.to_model(backbones.resolve(text, weights))


def _collect(inputs: Inputs | None, samples: bool) -> list[Any]:
    items: list[Any] = []
    if samples:
        items.extend(sample_images())
    if inputs is not None:
        if isinstance(inputs, (str, os.PathLike)):
            inputs = [inputs]
        if len(inputs):
            items.extend(list_images(inputs))
    if not items:
        raise TransferkitError("No images given: pass files, folders or globs (or --samples).")
    return items


def _name(item: Any) -> str:
    return item[0] if isinstance(item, tuple) else os.fspath(item)


def _run(model: TransferModel, items: list[Any], output: str, batch_size: int, device: str, engine: str,
         strict: bool, workers: int | None, desc: str):
    """Shared loop of predict/features: returns (rows as arrays, names of the items that worked)."""
    import numpy as np

    from transferkit.core.inference import OutputHead, Runner, draft_for, iter_batches
    from transferkit.core.progress import Progress

    pre = model.preprocessing
    runner = Runner(OutputHead.make(model.module, output), pre.input_size, device=device, engine=engine)
    skips = SkipLog(strict=strict)
    rows: list[Any] = []
    names: list[str] = []
    with Progress(len(items), desc, unit="img") as bar:
        for indices, batch in iter_batches(items, model.transform(), batch_size, workers, skips, draft_for(pre)):
            rows.append(runner(batch))
            names.extend(_name(items[i]) for i in indices)
            bar.update(len(indices))
    if skips.summary():
        print(f"warning: {skips.summary()}", file=sys.stderr)
    if not rows:
        raise TransferkitError("None of the images could be read.")
    return np.concatenate(rows), names, skips


def predict(
    inputs: Inputs | None = None,
    model: str | os.PathLike | TransferModel = DEFAULT_MODEL,
    top_k: int = 5,
    weights: str | os.PathLike | None = None,
    samples: bool = False,
    batch_size: int = 32,
    device: str = "auto",
    engine: str = "auto",
    strict: bool = False,
    workers: int | None = None,
) -> list[dict[str, Any]]:
    """Label images with a classifier's top-k classes.

    Args:
        inputs: files, folders (recursive) or glob patterns.
        model: model directory, run directory, or pretrained name.
        top_k: classes per image.
        samples: add scikit-image's bundled photos to the inputs.
        strict: stop at the first unreadable file instead of skipping it.

    Returns:
        One ``{"path": str, "top": [{"label": str, "prob": float}, ...]}`` per
        readable image, in input order.
    """
    if top_k < 1:
        raise TransferkitError("--top-k must be at least 1.")
    items = _collect(inputs, samples)  # cheap checks first: a typo in a path fails before any model loads
    tm = load(model, weights)
    names_of_classes = tm.class_names
    if not names_of_classes:
        raise TransferkitError(f"{tm.architecture} ({tm.task}) is not a classifier; use `transferkit features` instead.")
    probs, names, _ = _run(tm, items, "probs", batch_size, device, engine, strict, workers, "predict")
    return [top_k_row(name, p, names_of_classes, top_k) for name, p in zip(names, probs)]


def top_k_row(name: str, probs: Any, class_names: Sequence[str], top_k: int = 5) -> dict[str, Any]:
    """One image's answer of :func:`predict` (and of ``transferkit serve``): ``{"path", "top": [{"label", "prob"}]}``."""
    import numpy as np

    order = np.argsort(-np.asarray(probs), kind="stable")[: max(1, min(int(top_k), len(probs)))]
    return {"path": name, "top": [{"label": class_names[j], "prob": float(probs[j])} for j in order]}


@dataclass
class FeatureSet:
    """Feature vectors with the identity of what produced them.

    Attributes:
        features: (N, D) float32 array, one row per readable image.
        paths: the N image paths, in row order.
        model: model name or directory; ``layer``: pre_logits or pooled.
        preprocessing: the preprocessing dict; ``source``: where the weights came from.
    """

    features: Any
    paths: list[str]
    model: str
    layer: str
    preprocessing: dict[str, Any]
    source: str = ""
    skipped: list[str] = field(default_factory=list)

    def save(self, path: str | os.PathLike) -> Path:
        """Write an ``.npz`` that loads with ``allow_pickle=False`` (strings, no objects), atomically."""
        import io

        import numpy as np

        path = Path(path)
        buf = io.BytesIO()
        np.savez(
            buf,
            features=np.asarray(self.features, dtype=np.float32),
            paths=np.array(self.paths, dtype=str),
            model=np.array(self.model),
            layer=np.array(self.layer),
            preprocessing=np.array(json.dumps(self.preprocessing)),
            source=np.array(self.source),
        )
        return atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FeatureSet":
        import numpy as np

        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(
                    features=z["features"],
                    paths=[str(p) for p in z["paths"]],
                    model=str(z["model"]),
                    layer=str(z["layer"]),
                    preprocessing=json.loads(str(z["preprocessing"])),
                    source=str(z["source"]),
                )
        except (OSError, KeyError, ValueError) as err:
            raise TransferkitError(f"{path} is not a transferkit features file ({err}).") from None


def features(
    inputs: Inputs | None = None,
    model: str | os.PathLike | TransferModel = DEFAULT_MODEL,
    layer: str = "pre_logits",
    out: str | os.PathLike | None = None,
    weights: str | os.PathLike | None = None,
    samples: bool = False,
    batch_size: int = 32,
    device: str = "auto",
    engine: str = "auto",
    strict: bool = False,
    workers: int | None = None,
) -> FeatureSet:
    """Penultimate-layer features of every image (the CNN as a fixed feature extractor).

    Args:
        layer: ``pre_logits`` (what feeds the classifier) or ``pooled``.
        out: if given, also saved there as ``.npz``.
    """
    if layer not in ("pre_logits", "pooled"):
        raise TransferkitError(f"Unknown --layer {layer!r}; use pre_logits or pooled.")
    items = _collect(inputs, samples)
    tm = load(model, weights)
    feats, names, skips = _run(tm, items, layer, batch_size, device, engine, strict, workers, "features")
    fs = FeatureSet(
        features=feats.astype("float32"),
        paths=names,
        model=os.fspath(model) if not isinstance(model, TransferModel) else tm.architecture,
        layer=layer,
        preprocessing=tm.config.get("preprocessing", {}),
        source=json.dumps(tm.config.get("training", {})),
        skipped=[e.path for e in skips.skipped],
    )
    if out is not None:
        fs.save(out)
    return fs


def export(
    model: str | os.PathLike | TransferModel,
    format: str = "onnx",
    out: str | os.PathLike | None = None,
    weights: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Export a model to ONNX and check ONNX Runtime against PyTorch on a random batch.

    Returns:
        ``{"path": ..., "max_abs_diff": ...}``; the file defaults to
        ``MODEL_DIR/model.onnx``.
    """
    if format != "onnx":
        raise TransferkitError(f"Unknown export format {format!r}; only onnx is supported.")
    import numpy as np
    import onnxruntime as ort
    import torch

    from transferkit.core.inference import OutputHead, export_onnx_bytes

    tm = load(model, weights)
    if out is None:
        found = find_model_dir(model) if not isinstance(model, TransferModel) else None
        if found is None:
            raise TransferkitError("Give --out FILE.onnx when exporting a pretrained model by name.")
        out = found / "model.onnx"
    head = OutputHead.make(tm.module, "logits")
    shape = tm.preprocessing.input_size
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    data = export_onnx_bytes(head, x)
    path = atomic_write_bytes(out, data)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = head(x).float().numpy()
    return {"path": str(path), "max_abs_diff": float(np.abs(got - want).max())}
