"""Using a trained Siamese model: one-shot evaluation on unseen classes, runs, calibration and verification.

* :func:`evaluate`: N-way k-shot episodes drawn (seeded) only from classes the
  model never saw: every class of its training data is excluded, and for
  Omniglot every alphabet it was trained on.
* :func:`evaluate_runs`: Lake et al.'s runs format.
* :func:`calibrate`: a distance threshold from same / different pairs of
  held-out classes (EER, or a target false-accept rate), stored in the
  model's ``config.json``.
* :func:`verify`: nearest gallery identity, distance and match decision.

``evaluate`` and ``evaluate_runs`` match queries to candidates the way the
model was saved to (``model_matching``): with its test-time augmentation,
re-centred on the support set, by aligned views and local features where
stored (``matching.py``).  Calibration and verification use plain distances
of mean embeddings: a threshold must not depend on which gallery it is
applied to.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from transferkit.errors import TransferkitError


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the model


def load_siamese(run_or_model: str | os.PathLike):
    """Load a Siamese model directory (or a run directory holding ``model/``)."""
    from transferkit.core import modeldir

    found = modeldir.find_model_dir(run_or_model)
    if found is None:
        raise TransferkitError(f"{run_or_model} is not a transferkit model or run directory (no config.json).")
    config = modeldir.read_config(found)
    if config.get("task") != "siamese":
        raise TransferkitError(f"{run_or_model} holds a {config.get('task')!r} model, not a Siamese one.")
    model = modeldir.load(found)
    model.path = found  # type: ignore[attr-defined]
    return model


def image_format(model: Any) -> tuple[int, bool, bool]:
    """(side in pixels, grey, cropped to the ink) of the images the model was trained on; read others alike."""
    pre = model.config["preprocessing"]
    sia = model.config["siamese"]
    return int(pre["input_size"][-1]), bool(sia["grey"]), bool(sia.get("ink", False))  # models before --crop-ink: no


def _view_batches(net: Any, images: np.ndarray, batch_size: int, tta: int, ranges: Any, maps: bool):
    """Per batch: ((b, V, D) embeddings of each image's V = 1 + tta views, (b, C, h, w) mean map or None)."""
    import torch

    from transferkit.tasks.siamese.data import AffineRanges, affine_thetas, apply_affine, to_float_tensor

    net.eval()
    ranges = ranges or AffineRanges()
    thetas = affine_thetas(tta, ranges, torch.Generator().manual_seed(0)) if tta > 0 and ranges.p > 0 else []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            x = to_float_tensor(images[i:i + batch_size])
            views, fmap = [], None
            for v in [x] + [apply_affine(x, theta) for theta in thetas]:
                v = v.contiguous(memory_format=torch.channels_last)
                if maps:
                    e, m = net.embed_and_map(v)
                    if m is not None:
                        fmap = m.float() if fmap is None else fmap + m.float()
                else:
                    e = net.embed(v)
                views.append(e.float())
            yield torch.stack(views, dim=1), (None if fmap is None else fmap / len(views))


def embed_images(net: Any, images: np.ndarray, batch_size: int = 256, tta: int = 0, ranges: Any = None):
    """Embeddings (N, D) float32 tensor of uint8 images (N, H, W[, 3]), in eval mode without gradients.

    With ``tta`` > 0 (test-time augmentation), an image's embedding is the
    mean of its own and those of ``tta`` distortions of it, drawn from
    ``ranges`` (an :class:`~transferkit.tasks.siamese.data.AffineRanges`; the
    model's training distortions, Koch's by default); unit embeddings are
    renormalised.  The distortions are fixed and seeded, the same for every
    image, so an embedding does not depend on its batch.
    """
    import torch

    from transferkit.tasks.siamese.matching import Embedded

    out = [Embedded(views, None, net.kind).mean() for views, _ in _view_batches(net, images, batch_size, tta, ranges, False)]
    return torch.cat(out) if out else torch.zeros(0, net.embedding_size)


def embed_views(net: Any, images: np.ndarray, batch_size: int = 256, tta: int = 0, ranges: Any = None,
                maps: bool = False):
    """An :class:`~transferkit.tasks.siamese.matching.Embedded` of the images: every view's embedding
    (N, 1 + tta, D), and with ``maps`` the encoder's last feature map averaged over the views (for local
    matching).  Views as in :func:`embed_images` (whose embedding is their mean)."""
    import torch

    from transferkit.tasks.siamese.matching import Embedded

    views, fmaps = [], []
    for v, m in _view_batches(net, images, batch_size, tta, ranges, maps):
        views.append(v)
        if m is not None:
            fmaps.append(m)
    if not views:
        return Embedded(torch.zeros(0, 1 + tta, net.embedding_size), None, net.kind)
    return Embedded(torch.cat(views), torch.cat(fmaps) if fmaps and len(fmaps) == len(views) else None, net.kind)


def _model_tta(model: Any) -> tuple[int, Any]:
    """(views beyond the image, AffineRanges) of the test-time augmentation a model was saved with."""
    from transferkit.tasks.siamese.data import AffineRanges

    s = model.config.get("siamese", {})
    known = {f.name for f in dataclasses.fields(AffineRanges)}
    aug = {k: (tuple(v) if k == "scale" else float(v)) for k, v in (s.get("augment") or {}).items() if k in known}
    return int(s.get("tta", 0) or 0), AffineRanges(**aug)


def model_embed(model: Any, images: np.ndarray):
    """``embed_images`` with the test-time augmentation a model was saved with (none for models without one)."""
    tta, ranges = _model_tta(model)
    return embed_images(model.module, images, tta=tta, ranges=ranges)


def model_views(model: Any, images: np.ndarray, matching: Any):
    """``embed_views`` with the model's test-time augmentation, and feature maps when ``matching`` uses them."""
    tta, ranges = _model_tta(model)
    return embed_views(model.module, images, tta=tta, ranges=ranges, maps=matching.local > 0)


def model_center(model: Any, override: bool | None = None) -> bool:
    """Whether one-shot tasks re-centre the embeddings on their support set.

    The model's stored setting (off for models saved without one) unless
    ``override`` says otherwise; never for Koch's pair head, whose learned
    distance takes its sigmoid features as they are.
    """
    stored = bool(model.config.get("siamese", {}).get("center", False))
    wanted = stored if override is None else bool(override)
    return wanted and model.config.get("siamese", {}).get("head") != "pair"


def model_matching(model: Any, center: bool | None = None, align: bool | None = None,
                   local: float | None = None):
    """The :class:`~transferkit.tasks.siamese.matching.Matching` of one-shot tasks: the model's stored
    settings (off for models saved without them; always plain for Koch's pair head) unless overridden."""
    from transferkit.tasks.siamese.matching import Matching

    s = model.config.get("siamese", {})
    if s.get("head") == "pair":
        return Matching()
    align = bool(s.get("align", False)) if align is None else bool(align)
    local = float(s.get("local", 0.0) or 0.0) if local is None else float(local)
    if local < 0:
        raise TransferkitError(f"--local-match must be >= 0 (got {local:g}).")
    return Matching(center=model_center(model, center), align=align, local=local)


def seen_filter(model: Any, data: Any) -> tuple[list[int], dict[str, Any]]:
    """Classes of ``data`` the model never saw, and what was excluded.

    Excluded: every class name of the model's training data (train and
    validation classes); for Omniglot data and an Omniglot-trained model,
    every alphabet the model was trained on as well, so episodes come from
    disjoint alphabets.
    """
    training = model.config.get("training", {})
    seen_classes = set(model.config.get("class_names") or [])
    seen_groups = set(training.get("alphabets") or []) if data.kind == "omniglot" else set()
    keep, dropped_classes, dropped_groups = [], 0, set()
    for c, name in enumerate(data.classes):
        group = data.group_of(name)
        if group is not None and group in seen_groups:
            dropped_classes += 1
            dropped_groups.add(group)
        elif name in seen_classes:
            dropped_classes += 1
        else:
            keep.append(c)
    groups = sorted({data.group_of(data.classes[c]) for c in keep} - {None})
    info = {"excluded_classes": dropped_classes, "excluded_alphabets": sorted(dropped_groups), "classes": len(keep),
            "alphabets": groups}
    return keep, info


# --------------------------------------------------------------------------- evaluation


def episode_images(episodes: Sequence[Any]) -> np.ndarray:
    """Sorted indices of the images some episode uses (support or query)."""
    return np.unique(np.concatenate([np.r_[e.support.ravel(), e.query.ravel()] for e in episodes]))


def episode_views(model: Any, images: np.ndarray, episodes: Sequence[Any], matching: Any):
    """An :class:`~transferkit.tasks.siamese.matching.Embedded` of a whole image set for ``episodes``: only
    the images they use are embedded (``model_views``); the other rows stay zero."""
    import torch

    from transferkit.tasks.siamese.matching import Embedded

    used = episode_images(episodes)
    part = model_views(model, images[used], matching)
    views = part.views.new_zeros(len(images), *part.views.shape[1:])
    views[torch.as_tensor(used)] = part.views
    maps = None
    if part.maps is not None:
        maps = part.maps.new_zeros(len(images), *part.maps.shape[1:])
        maps[torch.as_tensor(used)] = part.maps
    return Embedded(views, maps, part.kind)


def evaluate(run_dir: str | os.PathLike, data: str | os.PathLike, way: int = 20, shot: int = 1, episodes: int = 400,
             queries: int = 1, seed: int = 0, center: bool | None = None, align: bool | None = None,
             local: float | None = None) -> dict[str, Any]:
    """N-way k-shot accuracy on classes of ``data`` the model never saw.

    ``center``, ``align``, ``local``: how a query is matched to the support set
    (:class:`~transferkit.tasks.siamese.matching.Matching`; None: as the model was saved).

    Returns:
        ``{"accuracy", "ci95", "episodes", "way", "shot", "queries", "center", "align", "local", "classes",
        "excluded_classes", "excluded_alphabets", "alphabets"}``.
    """
    from transferkit.tasks.siamese.data import load_image_set
    from transferkit.tasks.siamese.episodes import episode_accuracies, mean_ci95, sample_episodes

    if way < 2 or shot < 1 or episodes < 1 or queries < 1:
        raise TransferkitError("--way must be >= 2, and --shot, --episodes and --queries >= 1.")
    model = load_siamese(run_dir)
    matching = model_matching(model, center, align, local)
    size, grey, ink = image_format(model)
    ds = load_image_set(data, size, grey, ink)
    keep, info = seen_filter(model, ds)
    if len(keep) < way:
        raise TransferkitError(
            f"{data} has {len(keep)} classes the model has not seen ({info['excluded_classes']} seen ones excluded); "
            f"{way}-way episodes need {way}.")
    eps = sample_episodes(ds.labels, keep, way, shot, queries, episodes, seed)
    import torch

    if matching.plain:  # one mean embedding per image is all plain matching needs
        used = episode_images(eps)
        emb: Any = torch.zeros(len(ds), model.module.embedding_size)
        emb[torch.as_tensor(used)] = model_embed(model, ds.images[used])
    else:
        emb = episode_views(model, ds.images, eps, matching)
    accs = episode_accuracies(model.module.cdist, emb, eps, matching=matching)
    acc, ci = mean_ci95(accs)
    return {"accuracy": acc, "ci95": ci, "episodes": len(eps), "way": way, "shot": shot, "queries": queries,
            **dataclasses.asdict(matching), **info}


def evaluate_runs(run_dir: str | os.PathLike, runs_dir: str | os.PathLike, center: bool | None = None,
                  align: bool | None = None, local: float | None = None) -> dict[str, Any]:
    """Accuracy per run and overall on Lake et al.'s one-shot runs format.

    ``center``, ``align``, ``local``: how each test item is matched to its run's training images
    (:class:`~transferkit.tasks.siamese.matching.Matching`; None: as the model was saved).

    Returns:
        ``{"accuracy", "ci95", "episodes", "center", "align", "local", "runs": [{"run", "accuracy", "n"}]}``
        (ci95 over runs).
    """
    from transferkit.tasks.siamese.data import read_images
    from transferkit.tasks.siamese.episodes import mean_ci95, read_runs

    model = load_siamese(run_dir)
    matching = model_matching(model, center, align, local)
    size, grey, ink = image_format(model)
    runs = read_runs(runs_dir)
    per_run, correct, total = [], 0, 0
    import torch

    with torch.inference_mode():
        for run in runs:
            train_imgs, _ = read_images(run.training, size, grey, strict=True, ink=ink)
            test_imgs, _ = read_images(run.test, size, grey, strict=True, ink=ink)
            e_train, e_test = model_views(model, train_imgs, matching), model_views(model, test_imgs, matching)
            pred = matching.scores(e_test, e_train, model.module.cdist).argmax(dim=1).numpy()
            ok = int((pred == np.asarray(run.answers)).sum())
            per_run.append({"run": run.name, "accuracy": ok / len(run.test), "n": len(run.test)})
            correct += ok
            total += len(run.test)
    _, ci = mean_ci95([r["accuracy"] for r in per_run])
    return {"accuracy": correct / total, "ci95": ci, "episodes": len(runs), **dataclasses.asdict(matching),
            "runs": per_run}


# --------------------------------------------------------------------------- calibration


def pair_distances(net: Any, emb: Any, labels: np.ndarray, n_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Distances of balanced same / different pairs (i != j) among embedded images."""
    import torch

    from transferkit.tasks.siamese.thresholds import verification_pairs

    i, j, same = verification_pairs(labels, n_pairs, seed)
    with torch.inference_mode():
        d = net.distance(emb[torch.as_tensor(i)], emb[torch.as_tensor(j)]).float().numpy() if len(i) else np.zeros(0)
    return d[same == 1], d[same == 0]


def calibrate(run_dir: str | os.PathLike, data: str | os.PathLike, target_far: float | None = None, pairs: int = 2000,
              seed: int = 0, pictures: bool = True) -> dict[str, Any]:
    """Pick the verification threshold from same / different pairs of ``data`` and store it in the model.

    Classes the model was trained on are left out when at least two unseen
    classes remain (distances of trained classes are optimistically small).
    The model's ``config.json`` gets ``verification``; with ``pictures`` the
    run folder gets ``calibration_hist.png`` and ``calibration_roc.png``.
    """
    from transferkit.core.modeldir import CONFIG_FILE, atomic_write_text
    from transferkit.tasks.siamese.thresholds import choose_threshold
    from transferkit.tasks.siamese.data import load_image_set

    if target_far is not None and not 0 <= target_far < 1:
        raise TransferkitError(f"--far must be in [0, 1) (got {target_far}).")
    if pairs < 1:
        raise TransferkitError(f"--pairs must be at least 1 (got {pairs}).")
    model = load_siamese(run_dir)
    size, grey, ink = image_format(model)
    ds = load_image_set(data, size, grey, ink)
    keep, info = seen_filter(model, ds)
    note = None
    if len(keep) >= 2:
        ds = ds.subset_classes(keep)
    else:
        note = "fewer than two classes the model has not seen: calibrating on seen classes (optimistic)"
        _say(f"warning: {note}")
    if int((ds.counts() >= 2).sum()) < 1 or len(ds.classes) < 2:
        raise TransferkitError(f"{data} needs two classes, one of them with two images, to make same and different pairs.")
    emb = model_embed(model, ds.images)
    d_same, d_diff = pair_distances(model.module, emb, ds.labels, pairs, seed)
    cal = choose_threshold(d_same, d_diff, target_far)
    record = {**cal.to_dict(), "source": str(data), "classes": len(ds.classes)}
    if note:
        record["note"] = note
    config = dict(model.config)
    config["verification"] = record
    atomic_write_text(Path(model.path) / CONFIG_FILE, json.dumps(config, indent=2, ensure_ascii=False))
    if pictures:
        from transferkit.tasks.siamese.report import distance_histogram, roc_figure, save_figure

        folder = Path(model.path).parent if Path(model.path).name == "model" else Path(model.path)
        save_figure(distance_histogram(d_same, d_diff, cal.threshold, f"Calibration pairs from {Path(data).name}"),
                    folder / "calibration_hist.png")
        save_figure(roc_figure(d_same, d_diff, cal), folder / "calibration_roc.png")
    return record


# --------------------------------------------------------------------------- verification


def read_gallery(gallery: str | os.PathLike, size: int, grey: bool, ink: bool = False) -> tuple[np.ndarray, list[str], list[str]]:
    """Gallery images, their identities and file names.

    A gallery is a folder with one subfolder per identity (one or more images
    each), or a flat folder of images where the file name (without extension)
    is the identity.
    """
    from transferkit.core.images import is_image_path
    from transferkit.tasks.siamese.data import read_images

    root = Path(gallery)
    if not root.is_dir():
        raise TransferkitError(f"No such gallery folder: {gallery}")
    entries: list[tuple[Path, str]] = []
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    for d in subdirs:
        for p in sorted(d.rglob("*")):
            if p.is_file() and is_image_path(p) and not p.name.startswith("."):
                entries.append((p, d.name))
    for p in sorted(root.iterdir()):
        if p.is_file() and is_image_path(p) and not p.name.startswith("."):
            entries.append((p, p.stem))
    if not entries:
        raise TransferkitError(f"The gallery {gallery} holds no images (one subfolder per identity, or image files).")
    images, kept = read_images([p for p, _ in entries], size, grey, ink=ink)
    ident = dict(entries)
    if not kept:
        raise TransferkitError(f"None of the gallery images in {gallery} could be read.")
    return images, [ident[p] for p in kept], [str(p) for p in kept]


def verify(run_dir: str | os.PathLike, gallery: str | os.PathLike, images: Sequence[str | os.PathLike],
           threshold: float | None = None) -> list[dict[str, Any]]:
    """For each image: the nearest gallery identity, its distance, and match / no match.

    An identity's distance is that of its nearest gallery image.  The
    threshold is the calibrated one stored in the model unless given.

    Returns:
        ``[{"path", "identity", "distance", "match", "threshold"}]``.
    """
    import torch

    from transferkit.core.images import list_images
    from transferkit.tasks.siamese.data import read_images

    model = load_siamese(run_dir)
    if threshold is None:
        stored = model.config.get("verification") or {}
        if "threshold" not in stored:
            raise TransferkitError(
                f"{run_dir} has no verification threshold yet: run `transferkit siamese calibrate {run_dir} DATA` "
                "first, or give --threshold.")
        threshold = float(stored["threshold"])
    size, grey, ink = image_format(model)
    g_images, g_ids, _ = read_gallery(gallery, size, grey, ink)
    paths = list_images(images)
    q_images, kept = read_images(paths, size, grey, ink=ink)
    if not kept:
        raise TransferkitError("None of the images to verify could be read.")
    g_emb = model_embed(model, g_images)
    q_emb = model_embed(model, q_images)
    with torch.inference_mode():
        d = model.module.cdist(q_emb, g_emb).numpy()  # (queries, gallery images)
    ids = sorted(set(g_ids))
    cols = {k: [n for n, g in enumerate(g_ids) if g == k] for k in ids}
    per_id = np.stack([d[:, cols[k]].min(axis=1) for k in ids], axis=1)  # (queries, identities)
    out = []
    for q, p in enumerate(kept):
        best = int(per_id[q].argmin())
        dist = float(per_id[q, best])
        out.append({"path": str(p), "identity": ids[best], "distance": dist, "match": bool(dist <= threshold),
                    "threshold": float(threshold)})
    return out
