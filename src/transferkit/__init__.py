"""transferkit: reuse pretrained networks and classic advanced architectures on your own data.

The public API is imported lazily (``import transferkit`` stays fast)::

    transferkit.load(path_or_name)      -> TransferModel (model.save(path) writes it back)
    transferkit.predict(paths, ...)     -> [{"path": ..., "top": [{"label", "prob"}, ...]}, ...]
    transferkit.features(paths, ...)    -> FeatureSet (.features, .paths, .save(npz))
    transferkit.export(model_dir, ...)  -> ONNX file, checked against PyTorch

and each task's package, with its config, ``fit`` and ``evaluate``::

    transferkit.classify     transferkit.autoencoder   transferkit.novelty   transferkit.index
    transferkit.siamese      transferkit.seq2seq       transferkit.arch      transferkit.detect
    # e.g. transferkit.classify.fit(transferkit.classify.ClassifyConfig(), "photos/", "run")
"""

from __future__ import annotations

__version__ = "0.1.0"

_API = {
    "load": "transferkit.api",
    "predict": "transferkit.api",
    "features": "transferkit.api",
    "export": "transferkit.api",
    "FeatureSet": "transferkit.api",
    "TransferModel": "transferkit.core.modeldir",
    "TransferkitError": "transferkit.errors",
}

_TASKS = ("classify", "autoencoder", "novelty", "index", "siamese", "seq2seq", "arch", "detect", "caption", "gan")

__all__ = sorted(_API) + list(_TASKS) + ["__version__"]


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    if name in _TASKS:
        import importlib

        return importlib.import_module(f"transferkit.tasks.{name}")
    raise AttributeError(f"module 'transferkit' has no attribute {name!r}")
