"""On-disk cache of feature vectors, keyed by model, weights, preprocessing, layer and file content.

Computing penultimate features is the slow part of "the CNN as a fixed feature
extractor"; a second run on the same images (another head, another C, a few
more images) should cost only the new images.  A cache entry is one ``.npz``
per *model key*, holding rows of features and the content digest of the file
each row came from:

    model key = sha256(architecture name, weights digest, preprocessing, layer, extra)
    row key   = sha256(file bytes)

so renaming or moving a file still hits, editing a file (or changing the
weights, the preprocessing, the layer) misses.  Files live in
``$TRANSFERKIT_CACHE/features/`` (default ``~/.cache/transferkit/features``);
writes are atomic and merged under a file lock, so concurrent runs do not lose
each other's rows.  The ``.npz`` loads with ``allow_pickle=False``.

Typical use (what ``classify --strategy features`` does)::

    model = transferkit.load("efficientnet_lite0")
    res = extract_cached(paths, model, layer="pre_logits")
    res.features        # (n_ok, D) float32, rows for res.ok (indices into paths)
    res.hits, res.misses
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from transferkit.errors import ImageReadError, TransferkitError

CHUNK = 1 << 20


# --------------------------------------------------------------------------- digests


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def weights_digest(module: Any) -> str:
    """SHA-256 over a module's state dict (names, dtypes, shapes and raw values), independent of device."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # raw bytes: works for every dtype
    return h.hexdigest()


def model_key(architecture: str, weights: str, preprocessing: dict[str, Any], layer: str,
              extra: dict[str, Any] | None = None) -> str:
    """The cache key of a feature extractor (hex SHA-256 of its identity, JSON-encoded)."""
    ident = {
        "architecture": architecture,
        "weights": weights,
        "preprocessing": preprocessing,
        "layer": layer,
        "extra": extra or {},
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


def cache_root() -> Path:
    """``$TRANSFERKIT_CACHE/features`` (see :func:`transferkit.core.backbones.cache_dir`)."""
    from transferkit.core.backbones import cache_dir

    return cache_dir() / "features"


# --------------------------------------------------------------------------- the store


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (no-op where ``fcntl`` is missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: atomic replace still keeps the file whole
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


class FeatureCache:
    """Rows of features for one model key, stored in ``root/<key>.npz``.

    Args:
        key: from :func:`model_key`.
        root: folder of the cache (default :func:`cache_root`).
        meta: free-form description saved with the rows (model name, layer...).
    """

    def __init__(self, key: str, root: str | os.PathLike | None = None, meta: dict[str, Any] | None = None):
        self.key = key
        self.root = Path(root) if root is not None else cache_root()
        self.path = self.root / f"{key}.npz"
        self.meta = dict(meta or {})

    def _read(self) -> dict[str, np.ndarray]:
        if not self.path.is_file():
            return {}
        try:
            with np.load(self.path, allow_pickle=False) as z:
                digests = [str(d) for d in z["digests"]]
                feats = np.asarray(z["features"], dtype=np.float32)
        except (OSError, KeyError, ValueError, EOFError):
            print(f"warning: ignoring a damaged feature cache file {self.path}", file=sys.stderr)
            return {}
        return dict(zip(digests, feats))

    def get(self, digests: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached rows among ``digests`` (digest -> (D,) float32)."""
        table = self._read()
        return {d: table[d] for d in digests if d in table}

    def put(self, rows: dict[str, np.ndarray]) -> None:
        """Add rows (digest -> vector), merging with what other processes wrote meanwhile."""
        if not rows:
            return
        from transferkit.core.modeldir import atomic_write_bytes

        with _locked(self.path.with_suffix(".lock")):
            table = self._read()
            table.update({d: np.asarray(v, dtype=np.float32) for d, v in rows.items()})
            dims = {v.shape for v in table.values()}
            if len(dims) != 1:
                table = {d: np.asarray(v, dtype=np.float32) for d, v in rows.items()}
            buf = io.BytesIO()
            np.savez(
                buf,
                digests=np.array(list(table), dtype=str),
                features=np.stack(list(table.values())).astype(np.float32),
                meta=np.array(json.dumps(self.meta, default=str)),
            )
            atomic_write_bytes(self.path, buf.getvalue())

    def __len__(self) -> int:
        return len(self._read())


# --------------------------------------------------------------------------- extraction through the cache


@dataclass
class CachedFeatures:
    """Features of the readable files, in input order.

    Attributes:
        features: (len(ok), D) float32.
        ok: indices into the input paths of the rows (unreadable files are left out).
        hits, misses: rows found in the cache / computed now.
        skipped: the errors of unreadable files.
        seconds: wall time of the extraction.
    """

    features: np.ndarray
    ok: list[int]
    hits: int
    misses: int
    skipped: list[ImageReadError] = field(default_factory=list)
    seconds: float = 0.0
    runner: Any = None


def extractor_key(model: Any, layer: str, extra: dict[str, Any] | None = None) -> str:
    """:func:`model_key` of a :class:`~transferkit.core.modeldir.TransferModel` (weights hashed)."""
    if getattr(model, "crops_ink", False):  # the same weights read uncropped images would give other features
        extra = {**(extra or {}), "ink": True}
    return model_key(model.architecture, weights_digest(model.module), model.config.get("preprocessing") or {}, layer, extra)


RANK_ZERO_WAIT_S = 3600.0  # how long another DDP rank waits for rank 0's features (env TRANSFERKIT_RANK_WAIT)


def _wait_for_rank_zero(store: FeatureCache, digests: list, found: dict, todo: list) -> tuple[dict, list]:
    """Under DDP, ranks other than 0 let rank 0 extract and cache the features, then read them: one
    extraction, no race between processes. (Lightning's own launcher starts ranks 1.. only once rank 0
    is training, so they find a full cache at once; torchrun and srun start every rank together.)
    Returns the updated ``(found, todo)``; on rank 0, or without a launcher, they are returned unchanged."""
    import time

    from transferkit.core.engine import is_rank_zero, launcher_layout

    if is_rank_zero() or launcher_layout() is None:
        return found, todo
    deadline = time.monotonic() + float(os.environ.get("TRANSFERKIT_RANK_WAIT", RANK_ZERO_WAIT_S))
    wanted = [digests[i] for i in todo]
    while time.monotonic() < deadline:
        got = store.get(wanted)
        if len(got) == len(wanted):
            found = {**found, **got}
            return found, []
        time.sleep(1.0)
    return found, todo  # rank 0 never delivered (it failed, or does not cache these): compute them here


def extract_cached(
    paths: Sequence[str | os.PathLike],
    model: Any,
    layer: str = "pre_logits",
    batch_size: int = 32,
    device: str = "auto",
    engine: str = "auto",
    workers: int | None = None,
    cache: bool = True,
    root: str | os.PathLike | None = None,
    transform: Any = None,
    extra_key: dict[str, Any] | None = None,
    desc: str = "features",
    skips: Any = None,
    runner: Any = None,
) -> CachedFeatures:
    """Features of ``paths`` from ``model`` (a TransferModel), computing only what the cache lacks.

    Misses go through :class:`transferkit.core.inference.Runner` (ONNX Runtime
    on CPU), which is only built when there is something to compute.

    Args:
        transform: PIL image -> tensor; default the model's eval preprocessing.
            Pass ``extra_key`` describing any other transform (e.g.
            ``{"flip": True}``) so its rows are cached apart.
        cache: False computes everything and stores nothing.
        skips: a :class:`~transferkit.core.images.SkipLog` for unreadable files.
        runner: a :class:`~transferkit.core.inference.Runner` to reuse (one
            built here is returned in ``CachedFeatures.runner`` for the next call).
    """
    import time

    from transferkit.core.images import SkipLog
    from transferkit.core.inference import OutputHead, Runner, draft_for, iter_batches
    from transferkit.core.progress import Progress

    t0 = time.perf_counter()
    paths = [Path(p) for p in paths]
    skips = skips if skips is not None else SkipLog()
    pre = model.preprocessing
    digests: list[str | None] = []
    for p in paths:
        try:
            digests.append(file_digest(p))
        except OSError as err:
            skips.add(ImageReadError(p, f"cannot be opened ({err.strerror or err})"))
            digests.append(None)
    store = None
    found: dict[str, np.ndarray] = {}
    if cache:
        key = extractor_key(model, layer, extra_key)
        store = FeatureCache(key, root, meta={"architecture": model.architecture, "layer": layer, **(extra_key or {})})
        found = store.get([d for d in digests if d is not None])
    todo = [i for i, d in enumerate(digests) if d is not None and d not in found]
    if todo and store is not None:
        found, todo = _wait_for_rank_zero(store, digests, found, todo)
    computed: dict[int, np.ndarray] = {}
    if todo:
        if runner is None:
            runner = Runner(OutputHead.make(model.module, layer), pre.input_size, device=device, engine=engine)
        tf = transform or model.transform()
        with Progress(len(todo), desc, unit="img") as bar:
            for idx, batch in iter_batches([paths[i] for i in todo], tf, batch_size, workers, skips, draft_for(pre)):
                out = runner(batch)
                for j, row in zip(idx, out):
                    computed[todo[j]] = row
                bar.update(len(idx))
        if store is not None:
            store.put({digests[i]: v for i, v in computed.items()})  # type: ignore[misc]
    ok, rows = [], []
    for i, d in enumerate(digests):
        if d is None:
            continue
        if d in found:
            ok.append(i)
            rows.append(found[d])
        elif i in computed:
            ok.append(i)
            rows.append(computed[i])
    if not rows:
        raise TransferkitError("None of the images could be read.")
    hits = sum(1 for i in ok if digests[i] in found)
    return CachedFeatures(np.stack(rows).astype(np.float32), ok, hits, len(ok) - hits, list(skips.skipped),
                          time.perf_counter() - t0, runner)
