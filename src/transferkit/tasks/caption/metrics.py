"""Caption scores: corpus BLEU-1..4 (sacrebleu, every reference of an image), CIDEr-D, distinct captions.

Captions and references are compared after :func:`~.data.clean_caption`
(lower case, no punctuation), the usual preparation for Flickr8k and COCO.

CIDEr-D (Vedantam et al. 2015) follows the coco-caption reference
implementation (``pycocoevalcap/cider/cider_scorer.py``) step by step:
n-grams of 1..4 words weighted by TF-IDF, the document frequency counted over
the *references* of the scored images (one document per image), a candidate's
counts clipped at the reference's, a Gaussian penalty (sigma 6) on the
difference of lengths (the reference code measures length in bigrams), cosine
per n averaged over n and over references, times 10.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Sequence


def bleu(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> dict[str, float]:
    """Corpus BLEU-1..4 (0-100, sacrebleu's brevity penalty and 13a tokenizer), each image against all its references."""
    import sacrebleu

    n_refs = max((len(r) for r in refs), default=1)
    streams = [[r[j] if j < len(r) else None for r in refs] for j in range(n_refs)]  # None: fewer references
    out = {}
    for n in range(1, 5):
        metric = sacrebleu.BLEU(max_ngram_order=n)
        out[f"bleu{n}"] = float(metric.corpus_score(list(hyps), streams).score)
    return out


def _ngrams(words: Sequence[str], n_max: int = 4) -> Counter:
    counts: Counter = Counter()
    for n in range(1, n_max + 1):
        for i in range(len(words) - n + 1):
            counts[tuple(words[i : i + n])] += 1
    return counts


def cider_d(hyps: Sequence[str], refs: Sequence[Sequence[str]], sigma: float = 6.0, n_max: int = 4) -> float:
    """Corpus CIDEr-D: the mean over images of each image's score (see the module docstring)."""
    return float(sum(cider_d_per_image(hyps, refs, sigma, n_max)) / max(len(hyps), 1))


def cider_d_per_image(hyps: Sequence[str], refs: Sequence[Sequence[str]], sigma: float = 6.0, n_max: int = 4) -> list[float]:
    """CIDEr-D of each image (words split on spaces; clean the texts first)."""
    if len(hyps) != len(refs):
        raise ValueError("one list of references per hypothesis")
    crefs = [[_ngrams(r.split(), n_max) for r in rs] for rs in refs]
    ctest = [_ngrams(h.split(), n_max) for h in hyps]
    df: Counter = Counter()
    for rs in crefs:
        for ng in set(ng for r in rs for ng in r):
            df[ng] += 1
    log_n = math.log(float(len(crefs))) if crefs else 0.0

    def vec(counts: Counter):
        v = [defaultdict(float) for _ in range(n_max)]
        norm = [0.0] * n_max
        length = 0
        for ng, tf in counts.items():
            n = len(ng) - 1
            v[n][ng] = float(tf) * (log_n - math.log(max(1.0, df[ng])))
            norm[n] += v[n][ng] ** 2
            if n == 1:  # as in the reference code: the "length" is the number of bigrams
                length += tf
        return v, [math.sqrt(x) for x in norm], length

    def sim(vh, nh, lh, vr, nr, lr) -> list[float]:
        delta = float(lh - lr)
        val = [0.0] * n_max
        for n in range(n_max):
            for ng in vh[n]:
                val[n] += min(vh[n][ng], vr[n][ng]) * vr[n][ng]  # clipped: CIDEr-D's guard against repetition
            if nh[n] != 0 and nr[n] != 0:
                val[n] /= nh[n] * nr[n]
            val[n] *= math.exp(-(delta ** 2) / (2 * sigma ** 2))
        return val

    scores = []
    for test, rs in zip(ctest, crefs):
        vh, nh, lh = vec(test)
        total = [0.0] * n_max
        for r in rs:
            vr, nr, lr = vec(r)
            for n, s in enumerate(sim(vh, nh, lh, vr, nr, lr)):
                total[n] += s
        scores.append(10.0 * (sum(total) / n_max) / max(len(rs), 1))
    return scores


def unique_ratio(hyps: Sequence[str]) -> float:
    """Distinct captions / images (1.0: every image got its own caption; low: one caption for everything)."""
    return len(set(hyps)) / len(hyps) if hyps else 0.0


def score_all(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> dict[str, float]:
    """``bleu1..4``, ``cider``, ``unique_ratio``, ``n_images`` for cleaned hypotheses and references."""
    out = bleu(hyps, refs)
    out["cider"] = cider_d(hyps, refs)
    out["unique_ratio"] = unique_ratio(hyps)
    out["n_images"] = len(hyps)
    return out
