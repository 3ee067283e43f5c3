"""The embedding index: L2-normalised vectors, their names, and two search backends behind one interface.

* :class:`ExactBackend` (NumPy): cosine similarity = dot product of unit
  vectors, exact top-k with ``argpartition``; duplicates by chunked
  all-pairs products.  Used for collections below ``ann_threshold`` items.
* :class:`FaissBackend` (faiss HNSW, inner product): approximate nearest
  neighbours for large collections; duplicates from each item's nearest
  neighbours.  Its graph is saved as ``index.faiss``.

An index folder holds ``index.json`` (model, backend, counts), ``embeddings.npy``,
``items.json`` (names: file paths, or ``digits:17`` for array data), and for
array data ``thumbs.npy`` (the images, to draw results) and ``labels.npy``.
Everything loads without pickle.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from transferkit.core.modeldir import atomic_write_bytes, atomic_write_text
from transferkit.errors import TransferkitError

FORMAT = "transferkit-index"
FORMAT_VERSION = 1
# Above this many items, `auto` switches from exact NumPy search to faiss HNSW (see BENCHMARKS.md).
ANN_THRESHOLD = 50_000


class Backend(Protocol):
    """What a search backend implements."""

    name: str

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(M, D) unit queries -> similarities (M, k) descending, indices (M, k)."""

    def pairs_above(self, threshold: float) -> list[tuple[int, int, float]]:
        """All (i, j, similarity) with i < j and similarity >= threshold."""


class ExactBackend:
    """Exact cosine search with NumPy matrix products."""

    name = "numpy"

    def __init__(self, embeddings: np.ndarray, chunk: int = 512):
        self.emb = embeddings
        self.chunk = chunk

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.emb)
        k = min(k, n)
        sims_all, idx_all = [], []
        for s in range(0, len(queries), self.chunk):
            sims = queries[s:s + self.chunk] @ self.emb.T  # (m, N)
            part = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (len(sims), 1))
            top = np.take_along_axis(sims, part, axis=1)
            order = np.argsort(-top, axis=1, kind="stable")
            idx_all.append(np.take_along_axis(part, order, axis=1))
            sims_all.append(np.take_along_axis(top, order, axis=1))
        return np.concatenate(sims_all), np.concatenate(idx_all)

    def pairs_above(self, threshold: float) -> list[tuple[int, int, float]]:
        out: list[tuple[int, int, float]] = []
        n = len(self.emb)
        for s in range(0, n, self.chunk):
            sims = self.emb[s:s + self.chunk] @ self.emb.T  # (m, N)
            rows, cols = np.nonzero(sims >= threshold)
            for r, c in zip(rows, cols):
                i = s + int(r)
                if int(c) > i:
                    out.append((i, int(c), float(sims[r, c])))
        return out


class FaissBackend:
    """Approximate search with a faiss HNSW graph over inner products of unit vectors."""

    name = "faiss"

    def __init__(self, embeddings: np.ndarray, index: Any = None, m: int = 32, ef_search: int = 128):
        import faiss

        self.emb = embeddings
        if index is None:
            index = faiss.IndexHNSWFlat(embeddings.shape[1], m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = 80
            index.add(np.ascontiguousarray(embeddings, dtype=np.float32))
        self.index = index
        self.ef_search = ef_search

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, len(self.emb))
        self.index.hnsw.efSearch = max(self.ef_search, 2 * k)
        sims, idx = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return sims, idx

    def pairs_above(self, threshold: float, neighbours: int = 32) -> list[tuple[int, int, float]]:
        """From each item's ``neighbours`` nearest (approximate: a group larger than that is cut)."""
        sims, idx = self.search(self.emb, neighbours + 1)
        seen: set[tuple[int, int]] = set()
        out = []
        for i in range(len(self.emb)):
            for s, j in zip(sims[i], idx[i]):
                j = int(j)
                if j < 0 or j == i or s < threshold:
                    continue
                key = (min(i, j), max(i, j))
                if key not in seen:
                    seen.add(key)
                    out.append((key[0], key[1], float(s)))
        return out

    def save(self, path: str | os.PathLike) -> None:
        import faiss

        data = faiss.serialize_index(self.index)
        atomic_write_bytes(path, np.asarray(data).tobytes())

    @classmethod
    def load(cls, embeddings: np.ndarray, path: str | os.PathLike) -> "FaissBackend":
        import faiss

        raw = np.frombuffer(Path(path).read_bytes(), dtype=np.uint8)
        return cls(embeddings, faiss.deserialize_index(raw))


def choose_backend(n: int, backend: str = "auto", threshold: int = ANN_THRESHOLD) -> str:
    if backend not in ("auto", "numpy", "faiss"):
        raise TransferkitError(f"Unknown --backend {backend!r}; use auto, numpy or faiss.")
    if backend != "auto":
        return backend
    return "faiss" if n >= threshold else "numpy"


@dataclass
class Index:
    """Unit-length embeddings and what they stand for; ``search`` and ``duplicates`` use the chosen backend."""

    embeddings: np.ndarray
    names: list[str]
    meta: dict[str, Any]
    labels: np.ndarray | None = None
    thumbs: np.ndarray | None = None
    path: Path | None = None
    _backend: Any = field(default=None, repr=False)
    _lookup: dict[str, int] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            if self.meta.get("backend") == "faiss":
                stored = self.path / "index.faiss" if self.path is not None else None
                self._backend = (FaissBackend.load(self.embeddings, stored) if stored is not None and stored.is_file()
                                 else FaissBackend(self.embeddings))
            else:
                self._backend = ExactBackend(self.embeddings)
        return self._backend

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Unit queries (M, D) -> (similarities, indices), each (M, min(k, N)), best first."""
        if k < 1:
            raise TransferkitError("-k must be at least 1.")
        if queries.shape[1] != self.embeddings.shape[1]:
            raise TransferkitError(
                f"Query embeddings have {queries.shape[1]} dimensions; the index has {self.embeddings.shape[1]}.")
        return self.backend.search(np.asarray(queries, dtype=np.float32), k)

    def duplicates(self, threshold: float) -> list[tuple[int, int, float]]:
        """Pairs (i, j, similarity) with cosine similarity >= threshold, most similar first."""
        if not -1 <= threshold <= 1:
            raise TransferkitError(f"--threshold is a cosine similarity, between -1 and 1 (got {threshold}).")
        pairs = self.backend.pairs_above(threshold)
        return sorted(pairs, key=lambda p: (-p[2], p[0], p[1]))

    def find(self, name: str) -> int | None:
        """Row of an indexed item by its exact name (e.g. ``digits:17``), else None."""
        if self._lookup is None:
            self._lookup = {n: i for i, n in enumerate(self.names)}
        return self._lookup.get(name)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the index folder (each file atomically)."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise TransferkitError(f"{path} is a file; choose a folder for --out.")
        if path.is_dir() and any(path.iterdir()) and not (path / "index.json").is_file():
            raise TransferkitError(f"{path} exists and is not an index folder; not overwriting it.")
        path.mkdir(parents=True, exist_ok=True)

        def npy(arr: np.ndarray) -> bytes:
            buf = io.BytesIO()
            np.save(buf, arr, allow_pickle=False)
            return buf.getvalue()

        atomic_write_bytes(path / "embeddings.npy", npy(self.embeddings.astype(np.float32)))
        atomic_write_text(path / "items.json", json.dumps(self.names, ensure_ascii=False))
        for name, arr in (("labels.npy", self.labels), ("thumbs.npy", self.thumbs)):
            if arr is not None:
                atomic_write_bytes(path / name, npy(arr))
            elif (path / name).exists():
                (path / name).unlink()
        if self.meta.get("backend") == "faiss":
            self.backend.save(path / "index.faiss")  # type: ignore[union-attr]
        elif (path / "index.faiss").exists():
            (path / "index.faiss").unlink()
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **self.meta, "count": len(self),
                "dim": int(self.embeddings.shape[1])}
        atomic_write_text(path / "index.json", json.dumps(meta, indent=2, ensure_ascii=False))
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Index":
        path = Path(path)
        meta_file = path / "index.json"
        if not meta_file.is_file():
            raise TransferkitError(f"{path} is not an index folder (no index.json); make one with `transferkit index build`.")
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            names = json.loads((path / "items.json").read_text(encoding="utf-8"))
            emb = np.load(path / "embeddings.npy", allow_pickle=False)
            labels = np.load(path / "labels.npy", allow_pickle=False) if (path / "labels.npy").is_file() else None
            thumbs = np.load(path / "thumbs.npy", allow_pickle=False) if (path / "thumbs.npy").is_file() else None
        except (OSError, ValueError, json.JSONDecodeError) as err:
            raise TransferkitError(f"{path} is a damaged index folder ({err}).") from None
        if meta.get("format") != FORMAT:
            raise TransferkitError(f"{meta_file} is not a transferkit index.")
        if int(meta.get("format_version", 0)) > FORMAT_VERSION:
            raise TransferkitError(f"{path} was written by a newer transferkit; upgrade to read it.")
        if emb.ndim != 2 or len(emb) != len(names):
            raise TransferkitError(f"{path} is inconsistent: {len(emb)} embeddings for {len(names)} items.")
        return cls(emb.astype(np.float32), [str(n) for n in names], meta, labels, thumbs, path)
