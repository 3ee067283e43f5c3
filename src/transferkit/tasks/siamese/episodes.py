"""N-way k-shot episodes, their accuracy with a 95% confidence interval, and Lake et al.'s runs format.

An episode draws ``way`` classes, ``shot`` support images and ``queries``
query images of each (all distinct); each query is given the class whose
support images are nearest on average (optionally after re-centring the
embeddings on the support set: :func:`center_on_support`).  Accuracy is the mean over all
queries; the 95% interval is ``1.96 * sd(episode accuracies) / sqrt(episodes)``
(the convention of the few-shot literature).

The runs format of Lake, Salakhutdinov and Tenenbaum (2015)::

    DIR/run01/training/class01.png ... class20.png     one image per class
    DIR/run01/test/item01.png ... item20.png           the queries
    DIR/run01/class_labels.txt                         "run01/test/item01.png run01/training/class12.png"

:func:`read_runs` reads it (paths in ``class_labels.txt`` may be relative to
DIR or to the run folder); :func:`write_runs` writes new runs from an image
set, each run inside one alphabet (as Lake's) when it has enough characters,
its training and test images from two different drawers.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from transferkit.errors import TransferkitError


@dataclass
class Episode:
    """Indices into an image set: ``support`` (way, shot) and ``query`` (way, queries); row c is class ``classes[c]``."""

    classes: np.ndarray
    support: np.ndarray
    query: np.ndarray


def sample_episodes(labels: np.ndarray, pool: Sequence[int], way: int, shot: int, queries: int, n: int,
                    seed: int = 0) -> list[Episode]:
    """Seeded episodes over the classes in ``pool`` that have at least ``shot + queries`` images.

    Raises:
        TransferkitError: fewer than ``way`` such classes.
    """
    labels = np.asarray(labels)
    need = shot + queries
    members = {int(c): np.flatnonzero(labels == c) for c in pool}
    usable = sorted(c for c, m in members.items() if len(m) >= need)
    if len(usable) < way:
        raise TransferkitError(
            f"{way}-way {shot}-shot episodes need {way} classes with at least {need} images each; "
            f"only {len(usable)} are available.")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        classes = rng.choice(usable, way, replace=False)
        sup, qry = [], []
        for c in classes:
            pick = rng.choice(members[int(c)], need, replace=False)
            sup.append(pick[:shot])
            qry.append(pick[shot:])
        out.append(Episode(np.asarray(classes), np.stack(sup), np.stack(qry)))
    return out


def center_on_support(support: Any, *others: Any) -> tuple[Any, ...]:
    """Unit embeddings re-centred on the support set: ``normalize(e - mean(support))`` for each tensor.

    The candidates of a one-shot task often share much (Lake's runs: one
    alphabet, one style); their mean embedding is that shared part, and
    removing it leaves the directions that tell them apart (SimpleShot,
    Wang et al. 2019, centres on the training classes' mean; the support set
    is the task's own labelled data, so this uses no query).  For two
    one-shot candidates it changes no decision.
    """
    import torch.nn.functional as F

    mu = support.mean(dim=0, keepdim=True)  # (1, D)
    return tuple(F.normalize(t - mu, dim=-1) for t in (support, *others))


def episode_predictions(cdist: Callable[[Any, Any], Any], emb: Any, ep: Episode, center: bool = False,
                        matching: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class row per query (way*queries,), dissimilarities (way*queries, way)) for one episode.

    ``emb``: (N, D) embeddings, or a :class:`~transferkit.tasks.siamese.matching.Embedded` of the image set.
    ``center``: distances of unit embeddings after :func:`center_on_support`.
    ``matching``: a :class:`~transferkit.tasks.siamese.matching.Matching` (overrides ``center``); with
    aligned views or local features the dissimilarity is minus its score.  A class with several shots
    gets the mean over them.
    """
    import torch

    from transferkit.tasks.siamese.matching import Embedded, Matching

    matching = matching or Matching(center=center)
    way, shot = ep.support.shape
    sup_i, qry_i = ep.support.reshape(-1), ep.query.reshape(-1)
    with torch.inference_mode():  # the pair head's learned distance would otherwise track gradients
        if matching.plain:
            if isinstance(emb, Embedded):  # the episode's rows only, not the whole image set's mean
                sup, qry = emb.take(sup_i).mean(), emb.take(qry_i).mean()
            else:
                sup, qry = emb[torch.as_tensor(sup_i)], emb[torch.as_tensor(qry_i)]
            if matching.center:
                sup, qry = center_on_support(sup, qry)
            d = cdist(qry, sup)
        else:
            e = Embedded.of(emb)
            d = -matching.scores(e.take(qry_i), e.take(sup_i), cdist)
        d = d.reshape(len(qry_i), way, shot).mean(dim=2)  # mean over each class's shots
    return d.argmin(dim=1).cpu().numpy(), d.cpu().numpy()


def episode_accuracies(cdist: Callable[[Any, Any], Any], emb: Any, episodes: Sequence[Episode],
                       center: bool = False, matching: Any = None) -> np.ndarray:
    """Accuracy of each episode (fraction of its queries given their own class); arguments as
    :func:`episode_predictions`."""
    accs = []
    for ep in episodes:
        pred, _ = episode_predictions(cdist, emb, ep, center, matching)
        truth = np.repeat(np.arange(ep.query.shape[0]), ep.query.shape[1])
        accs.append(float((pred == truth).mean()))
    return np.asarray(accs)


def mean_ci95(accs: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% confidence interval of the mean (normal approximation)."""
    a = np.asarray(accs, dtype=np.float64)
    if len(a) == 0:
        return float("nan"), float("nan")
    half = 1.96 * a.std(ddof=1) / math.sqrt(len(a)) if len(a) > 1 else float("nan")
    return float(a.mean()), float(half)


# --------------------------------------------------------------------------- Lake et al.'s runs


@dataclass
class Run:
    """One run: candidate images (one per class), test images and the right answer of each."""

    name: str
    training: list[Path]
    test: list[Path]
    answers: list[int]  # index into ``training`` for each test image


_RUN = re.compile(r"^run\d+$")


def _resolve(root: Path, run_dir: Path, text: str) -> Path:
    for cand in (root / text, run_dir / text, run_dir / Path(text).parent.name / Path(text).name):
        if cand.is_file():
            return cand.resolve()
    return (root / text).resolve()


def read_runs(root: str | os.PathLike) -> list[Run]:
    """Read every ``runNN`` folder under ``root`` (or ``root`` itself when it is one run).

    Raises:
        TransferkitError: no runs, a missing ``class_labels.txt``, a label line
            that is not two paths, or a path that does not exist.
    """
    root = Path(root)
    if not root.is_dir():
        raise TransferkitError(f"No such folder: {root}")
    if (root / "class_labels.txt").is_file():
        dirs = [root]
        base = root.parent
    else:
        dirs = sorted(d for d in root.iterdir() if d.is_dir() and _RUN.match(d.name))
        base = root
    if not dirs:
        raise TransferkitError(f"{root} holds no runNN folders (the one-shot runs format of Lake et al.).")
    runs = []
    for d in dirs:
        labels_file = d / "class_labels.txt"
        if not labels_file.is_file():
            raise TransferkitError(f"{d} has no class_labels.txt.")
        train_dir = d / "training"
        if not train_dir.is_dir():
            raise TransferkitError(f"{d} has no training/ folder.")
        training = sorted(p.resolve() for p in train_dir.iterdir() if p.is_file() and not p.name.startswith("."))
        index = {p: i for i, p in enumerate(training)}
        test, answers = [], []
        for n, line in enumerate(labels_file.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2:
                raise TransferkitError(f"{labels_file}, line {n}: expected 'test_image training_image', got {line!r}.")
            t, c = _resolve(base, d, parts[0]), _resolve(base, d, parts[1])
            for p in (t, c):
                if not p.is_file():
                    raise TransferkitError(f"{labels_file}, line {n}: no such file {p}.")
            if c not in index:
                raise TransferkitError(f"{labels_file}, line {n}: {parts[1]} is not in {train_dir}.")
            test.append(t)
            answers.append(index[c])
        if not test:
            raise TransferkitError(f"{labels_file} lists no test images.")
        runs.append(Run(d.name, training, test, answers))
    return runs


def write_runs(images: np.ndarray, labels: np.ndarray, classes: Sequence[str], out: str | os.PathLike, n_runs: int = 20,
               way: int = 20, seed: int = 0, groups: Sequence[str | None] | None = None,
               pool: Sequence[int] | None = None) -> list[Path]:
    """Write ``n_runs`` runs in Lake et al.'s format from labelled images (uint8 arrays).

    Each run takes ``way`` classes (from one group, e.g. one alphabet, when
    that group has ``way`` classes; groups with enough classes take turns,
    else classes are drawn from the whole pool), and two different image
    positions ("drawers"): the first for the training image of each class,
    the second for its test image.  Returns the run folders.
    """
    from PIL import Image

    from transferkit.core.modeldir import atomic_write_text

    out = Path(out)
    labels = np.asarray(labels)
    pool = list(range(len(classes))) if pool is None else list(pool)
    members = {c: np.flatnonzero(labels == c) for c in pool}
    pool = [c for c in pool if len(members[c]) >= 2]
    if len(pool) < way:
        raise TransferkitError(f"{way}-way runs need {way} classes with two images each; only {len(pool)} are available.")
    by_group: dict[str, list[int]] = {}
    if groups is not None:
        for c in pool:
            if groups[c] is not None:
                by_group.setdefault(str(groups[c]), []).append(c)
    big = sorted(g for g, cs in by_group.items() if len(cs) >= way)
    rng = np.random.default_rng(seed)
    dirs = []
    for r in range(n_runs):
        candidates = by_group[big[r % len(big)]] if big else pool
        chosen = rng.choice(candidates, way, replace=False)
        n_min = min(len(members[c]) for c in chosen)
        d1, d2 = rng.choice(n_min, 2, replace=False)
        order = rng.permutation(way)  # test items in a shuffled order, as in Lake's runs
        run = out / f"run{r + 1:02d}"
        (run / "training").mkdir(parents=True, exist_ok=True)
        (run / "test").mkdir(parents=True, exist_ok=True)
        lines = []
        for k, c in enumerate(chosen):
            Image.fromarray(images[members[c][d1]]).save(run / "training" / f"class{k + 1:02d}.png")
        for t, k in enumerate(order):
            Image.fromarray(images[members[chosen[k]][d2]]).save(run / "test" / f"item{t + 1:02d}.png")
            lines.append(f"{run.name}/test/item{t + 1:02d}.png {run.name}/training/class{k + 1:02d}.png")
        atomic_write_text(run / "class_labels.txt", "\n".join(lines) + "\n")
        dirs.append(run)
    return dirs
