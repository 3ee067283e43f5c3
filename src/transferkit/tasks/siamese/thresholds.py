"""Verification thresholds picked from data: same / different pairs, ROC, equal error rate or a target FAR.

A verification decision is ``distance <= threshold`` -> match.  On held-out
pairs:

* false-accept rate FAR(t): fraction of *different* pairs with distance <= t;
* false-reject rate FRR(t): fraction of *same* pairs with distance > t.

:func:`choose_threshold` picks the equal-error-rate point (FAR = FRR, the
default) or the largest threshold whose FAR does not exceed a target.  When
the two groups do not overlap, the EER threshold is the midpoint of the gap
between them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


def verification_pairs(labels: np.ndarray, n_pairs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Up to ``n_pairs`` same-class and as many different-class pairs (i != j), seeded.

    Returns:
        (i, j, same) arrays; ``same`` is 1 for same-class pairs.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    members = {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}
    with_pairs = [c for c, m in members.items() if len(m) >= 2]
    same_i, same_j = [], []
    if with_pairs:
        n_possible = sum(len(members[c]) * (len(members[c]) - 1) // 2 for c in with_pairs)
        target = min(n_pairs, n_possible)
        seen: set[tuple[int, int]] = set()
        tries = 0
        while len(seen) < target and tries < 50 * target:
            tries += 1
            c = with_pairs[rng.integers(len(with_pairs))]
            a, b = rng.choice(members[c], 2, replace=False)
            key = (int(min(a, b)), int(max(a, b)))
            if key not in seen:
                seen.add(key)
                same_i.append(key[0])
                same_j.append(key[1])
    n_diff = len(same_i) if same_i else n_pairs
    diff_i, diff_j = [], []
    if len(members) >= 2:
        while len(diff_i) < n_diff:
            a, b = rng.integers(len(labels), size=2)
            if labels[a] != labels[b]:
                diff_i.append(int(a))
                diff_j.append(int(b))
    i = np.asarray(same_i + diff_i, dtype=np.int64)
    j = np.asarray(same_j + diff_j, dtype=np.int64)
    same = np.asarray([1] * len(same_i) + [0] * len(diff_i), dtype=np.int64)
    return i, j, same


def rates(d_same: np.ndarray, d_diff: np.ndarray, t: float) -> tuple[float, float]:
    """(FAR, FRR) at threshold ``t``."""
    far = float(np.mean(np.asarray(d_diff) <= t)) if len(d_diff) else 0.0
    frr = float(np.mean(np.asarray(d_same) > t)) if len(d_same) else 0.0
    return far, frr


@dataclass
class Calibration:
    """A chosen threshold and how it performs on the calibration pairs."""

    threshold: float
    method: str  # "eer" or "far"
    target_far: float | None
    far: float
    frr: float
    eer: float
    auc: float
    same_pairs: int
    different_pairs: int

    def to_dict(self) -> dict[str, Any]:
        return {k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in asdict(self).items()}


def equal_error_rate(d_same: np.ndarray, d_diff: np.ndarray) -> tuple[float, float]:
    """(threshold, EER): the threshold where FAR and FRR are closest, and their mean there."""
    d_same, d_diff = np.sort(np.asarray(d_same, float)), np.sort(np.asarray(d_diff, float))
    if len(d_same) and len(d_diff) and d_same[-1] < d_diff[0]:
        return float((d_same[-1] + d_diff[0]) / 2), 0.0  # separable: the middle of the gap
    cands = np.unique(np.concatenate([d_same, d_diff]))
    far = np.searchsorted(d_diff, cands, side="right") / max(len(d_diff), 1)
    frr = 1 - np.searchsorted(d_same, cands, side="right") / max(len(d_same), 1)
    k = int(np.argmin(np.abs(far - frr)))
    # the midpoint to the next candidate keeps the threshold off the sample values themselves
    t = float((cands[k] + cands[k + 1]) / 2) if k + 1 < len(cands) else float(cands[k])
    return t, float((far[k] + frr[k]) / 2)


def threshold_for_far(d_same: np.ndarray, d_diff: np.ndarray, target_far: float) -> float:
    """The largest threshold whose false-accept rate is at most ``target_far``."""
    d_diff = np.sort(np.asarray(d_diff, float))
    allowed = int(np.floor(target_far * len(d_diff) + 1e-9))  # different pairs we may accept
    if allowed >= len(d_diff):
        return float(d_diff[-1])
    upper = d_diff[allowed]  # accepting this one would exceed the target: stay strictly below it
    if allowed > 0 and d_diff[allowed - 1] < upper:
        return float((d_diff[allowed - 1] + upper) / 2)
    return float(np.nextafter(upper, -np.inf))


def roc_auc(d_same: np.ndarray, d_diff: np.ndarray) -> float:
    """Area under the ROC curve of "same" scored by ``-distance``."""
    from sklearn.metrics import roc_auc_score

    if not len(d_same) or not len(d_diff):
        return float("nan")
    y = np.r_[np.ones(len(d_same)), np.zeros(len(d_diff))]
    return float(roc_auc_score(y, -np.r_[d_same, d_diff]))


def choose_threshold(d_same: np.ndarray, d_diff: np.ndarray, target_far: float | None = None) -> Calibration:
    """EER threshold (default) or the largest threshold with FAR <= ``target_far``."""
    d_same, d_diff = np.asarray(d_same, float), np.asarray(d_diff, float)
    t_eer, eer = equal_error_rate(d_same, d_diff)
    if target_far is None:
        t, method = t_eer, "eer"
    else:
        t, method = threshold_for_far(d_same, d_diff, target_far), "far"
    far, frr = rates(d_same, d_diff, t)
    return Calibration(t, method, target_far, far, frr, eer, roc_auc(d_same, d_diff), len(d_same), len(d_diff))
