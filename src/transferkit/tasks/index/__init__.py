"""Cosine-similarity search over image embeddings (a pretrained backbone's, or an autoencoder's codes).

>>> from transferkit.tasks.index import build, search, duplicates
>>> build("photos/", "photos.index")                       # efficientnet_lite0 features, L2-normalised
>>> search("photos.index", ["query.jpg"], k=5)             # [{"query", "hits": [{"rank", "name", "similarity"}]}]
>>> duplicates("photos.index", threshold=0.95)            # [{"a", "b", "similarity"}]

Exact NumPy search below ``ANN_THRESHOLD`` items, faiss HNSW above (``backend="auto"``).
The index stores embeddings, not a model: it has no ``build_model``.
"""

from __future__ import annotations

from transferkit.core.lazy import lazy_exports
from transferkit.tasks.index.store import ANN_THRESHOLD, ExactBackend, FaissBackend, Index, choose_backend

__getattr__, __dir__ = lazy_exports(__name__, {"build": "ops", "search": "ops", "duplicates": "ops"})

__all__ = ["ANN_THRESHOLD", "ExactBackend", "FaissBackend", "Index", "build", "choose_backend", "duplicates", "search"]
