"""`index build`, `index search` and `index duplicates` as functions (the CLI is a thin layer over these)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from transferkit.core.backbones import DEFAULT_MODEL
from transferkit.errors import TransferkitError
from transferkit.tasks.index.embed import embed_arrays, embed_files, is_array_data, l2_normalise, load_model
from transferkit.tasks.index.store import ANN_THRESHOLD, Index, choose_backend


def display_name(name: str) -> str:
    """A path relative to the working folder when it lies below it; other names unchanged."""
    if os.path.isabs(name):
        try:
            rel = os.path.relpath(name)
        except ValueError:
            return name
        return name if rel.startswith("..") else rel
    return name


def build(data: str | os.PathLike | Sequence[str | os.PathLike], out: str | os.PathLike | None = None,
          model: str | os.PathLike = DEFAULT_MODEL, backend: str = "auto", ann_threshold: int = ANN_THRESHOLD,
          batch_size: int = 32, engine: str = "auto", strict: bool = False) -> Index:
    """Embed DATA with ``model``, L2-normalise, and save the index folder ``out`` (if given).

    Args:
        data: image files, folders (recursive) or globs; or ``digits`` / an MNIST
            IDX folder (items are then named ``digits:ROW`` / ``mnist:ROW``).
        model: a pretrained backbone name, or an autoencoder run/model directory (its codes).
        backend: ``auto`` (NumPy exact below ``ann_threshold`` items, faiss HNSW
            above), ``numpy`` or ``faiss``.
    """
    from transferkit.core.datasets import load_arrays
    from transferkit.core.images import list_images

    inputs = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    if not inputs:
        raise TransferkitError("Give the images to index: files, folders, globs, 'digits' or an MNIST folder.")
    if ann_threshold < 1:
        raise TransferkitError("--ann-threshold must be at least 1.")
    arrays = paths = None
    if len(inputs) == 1 and is_array_data(os.fspath(inputs[0])):
        arrays = load_arrays(os.fspath(inputs[0]))
    else:
        paths = [p.resolve() for p in list_images(inputs)]
        if not paths:
            raise TransferkitError("No images found in " + ", ".join(map(os.fspath, inputs)) + ".")
    tm, kind, identity = load_model(model)  # after the data checks: loading a backbone takes seconds
    if kind not in ("backbone", "autoencoder"):
        print(f"note: {model} is a {kind} model; indexing its penultimate features", file=sys.stderr)
    labels = thumbs = None
    classes: list[str] = []
    if arrays is not None:
        text = os.fspath(inputs[0])
        prefix = "digits" if text == "digits" else "mnist"
        names = [f"{prefix}:{i}" for i in range(len(arrays))]
        emb = embed_arrays(arrays.images, names, tm, batch_size=max(batch_size, 64), engine=engine)
        thumbs, labels, classes = arrays.images, arrays.labels, list(arrays.classes)
        source, data_kind = (text if text == "digits" else str(Path(text).resolve())), "arrays"
    else:
        emb = embed_files(paths, tm, batch_size=batch_size, engine=engine, strict=strict)
        names = emb.names
        source, data_kind = ", ".join(os.fspath(i) for i in inputs), "files"
    if len(emb.features) == 0:
        raise TransferkitError("None of the images could be embedded.")
    vectors = l2_normalise(emb.features)
    meta = {
        "model": identity,
        "model_kind": kind,
        "backend": choose_backend(len(vectors), backend, ann_threshold),
        "ann_threshold": ann_threshold,
        "engine": engine,
        "source": source,
        "data_kind": data_kind,
        "classes": classes,
        "skipped": emb.skipped,
    }
    index = Index(vectors, list(emb.names), meta, labels, thumbs)
    if out is not None:
        index.save(out)
    return index


def load(index: str | os.PathLike | Index) -> Index:
    return index if isinstance(index, Index) else Index.load(index)


def embed_queries(index: Index, queries: Sequence[str | os.PathLike], strict: bool = True) -> tuple[np.ndarray, list[str]]:
    """Unit embeddings of the queries: an item name of the index (its stored vector) or an image file."""
    rows: list[np.ndarray | None] = []
    files: list[Path] = []
    for q in queries:
        text = os.fspath(q)
        i = index.find(text)
        if i is not None:
            rows.append(index.embeddings[i])
        elif Path(text).is_file():
            rows.append(None)
            files.append(Path(text))
        else:
            raise TransferkitError(f"{text} is neither an image file nor an item of the index (e.g. {index.names[0]}).")
    computed: dict[str, np.ndarray] = {}
    if files:
        tm = model_of(index)
        emb = embed_files(files, tm, batch_size=32, engine=index.meta.get("engine", "auto"), strict=strict)
        computed = dict(zip(emb.names, l2_normalise(emb.features)))
    out, names = [], []
    for q, r in zip(queries, rows):
        text = os.fspath(q)
        if r is None:
            if text not in computed:
                continue  # unreadable file, already reported
            r = computed[text]
        out.append(r)
        names.append(text)
    if not out:
        raise TransferkitError("None of the query images could be read.")
    return np.stack(out).astype(np.float32), names


def model_of(index: Index):
    """The model that made the index, loaded again (its name or folder is in index.json)."""
    from transferkit.api import load as load_model_dir

    ident = index.meta.get("model")
    if not ident:
        raise TransferkitError("The index does not name its model; rebuild it with `transferkit index build`.")
    if index.meta.get("model_kind") != "backbone" and not Path(ident).exists():
        raise TransferkitError(f"The index was built with the model in {ident}, which no longer exists.")
    return load_model_dir(ident)


def search(index: str | os.PathLike | Index, queries: Sequence[str | os.PathLike], k: int = 5,
           skip_self: bool = False) -> list[dict[str, Any]]:
    """Nearest indexed items of each query by cosine similarity.

    Returns one ``{"query": name, "hits": [{"rank", "name", "similarity"[, "label"]}]}``
    per readable query; ``skip_self`` leaves out a hit with the query's own name.
    """
    idx = load(index)
    if k < 1:
        raise TransferkitError("-k must be at least 1.")
    vecs, names = embed_queries(idx, queries)
    sims, rows = idx.search(vecs, k + (1 if skip_self else 0))
    results = []
    for qname, s_row, i_row in zip(names, sims, rows):
        hits = []
        q_resolved = str(Path(qname).resolve()) if Path(qname).exists() else qname
        for s, i in zip(s_row, i_row):
            i = int(i)
            if i < 0:
                continue
            if skip_self and idx.names[i] in (qname, q_resolved):
                continue
            hit = {"rank": len(hits) + 1, "name": idx.names[i], "similarity": min(1.0, float(s))}
            if idx.labels is not None:
                lab = int(idx.labels[i])
                classes = idx.meta.get("classes") or []
                hit["label"] = classes[lab] if lab < len(classes) else str(lab)
            hits.append(hit)
            if len(hits) == k:
                break
        results.append({"query": qname, "hits": hits})
    return results


def duplicates(index: str | os.PathLike | Index, threshold: float = 0.95) -> list[dict[str, Any]]:
    """Near-duplicate pairs: ``{"a", "b", "similarity"}`` with cosine similarity >= threshold, best first."""
    idx = load(index)
    return [{"a": idx.names[i], "b": idx.names[j], "similarity": min(1.0, s)} for i, j, s in idx.duplicates(threshold)]


# --------------------------------------------------------------------------- pictures


def _picture(index: Index, name: str, size: int = 96) -> np.ndarray:
    """The image of an item (its stored thumbnail, or the file), as uint8 for a grid."""
    from transferkit.core.images import read_image

    i = index.find(name)
    if i is not None and index.thumbs is not None:
        return index.thumbs[i]
    img = read_image(name)
    img.thumbnail((size, size))
    return np.asarray(img)


def draw(index: str | os.PathLike | Index, results: Sequence[dict[str, Any]], out: str | os.PathLike) -> Path:
    """One row per query: the query, then its hits titled with their similarity; saved as PNG."""
    from transferkit.core.modeldir import atomic_write_bytes
    from transferkit.core.report import image_grid, plt

    idx = load(index)
    k = max((len(r["hits"]) for r in results), default=0)
    images, titles = [], []
    for r in results:
        images.append(_picture(idx, r["query"]))
        titles.append("query")
        for h in r["hits"]:
            images.append(_picture(idx, h["name"]))
            titles.append(f"{h['similarity']:.3f}" + (f" ({h['label']})" if "label" in h else ""))
        for _ in range(k - len(r["hits"])):
            images.append(np.zeros((2, 2), dtype=np.uint8))
            titles.append("")
    fig = image_grid(images, titles, ncols=k + 1, size=1.5)
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt().close(fig)
    out = Path(out)
    return atomic_write_bytes(out, buf.getvalue())
