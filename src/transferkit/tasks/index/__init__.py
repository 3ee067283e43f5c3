"""Cosine-similarity search over image embeddings (a pretrained backbone's, or an autoencoder's codes).

>>> from transferkit.tasks.index import build, search, duplicates
>>> build("photos/", "photos.index")                       # efficientnet_lite0 features, L2-normalised
>>> search("photos.index", ["query.jpg"], k=5)             # [{"query", "hits": [{"rank", "name", "similarity"}]}]
>>> duplicates("photos.index", threshold=0.95)            # [{"a", "b", "similarity"}]

Exact NumPy search below ``ANN_THRESHOLD`` items, faiss HNSW above (``backend="auto"``).
The index stores embeddings, not a model: it has no ``build_model``.
"""

from __future__ import annotations

from typing import Any

from transferkit.tasks.index.store import ANN_THRESHOLD, ExactBackend, FaissBackend, Index, choose_backend


def build(*args: Any, **kwargs: Any) -> Index:
    """See :func:`transferkit.tasks.index.ops.build`."""
    from transferkit.tasks.index.ops import build as _build

    return _build(*args, **kwargs)


def search(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """See :func:`transferkit.tasks.index.ops.search`."""
    from transferkit.tasks.index.ops import search as _search

    return _search(*args, **kwargs)


def duplicates(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """See :func:`transferkit.tasks.index.ops.duplicates`."""
    from transferkit.tasks.index.ops import duplicates as _duplicates

    return _duplicates(*args, **kwargs)


__all__ = ["ANN_THRESHOLD", "ExactBackend", "FaissBackend", "Index", "build", "choose_backend", "duplicates", "search"]
