"""Siamese objectives as injected components: one method, ``__call__(embeddings, labels, net) -> loss``.

* :class:`PairLoss`: Koch et al.'s head (``net.head``) on balanced same /
  different pairs of the batch, binary cross-entropy.
* :class:`MetricLoss`: a pytorch-metric-learning loss, with a miner where
  it takes one (contrastive or triplet: semi-hard, hard or all tuples of
  the batch; supervised contrastive; multi-similarity).

The training module knows nothing about which one it holds, so a new
objective is one class with one method (pytorch-metric-learning's design).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn.functional as F

from transferkit.tasks.siamese.data import balanced_pairs


class SiameseObjective(Protocol):
    """What the training module calls at every step."""

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor, net: Any) -> torch.Tensor:
        ...


class PairLoss:
    """Binary cross-entropy of Koch's ``p(same)`` on balanced pairs of the batch.

    ``mining``: ``hard`` takes the most similar different-class pairs as the
    negatives; ``semihard`` and ``all`` draw them at random (every same pair
    is used in all cases, and as many different pairs).
    """

    def __init__(self, mining: str = "semihard"):
        self.mining = mining

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor, net: Any) -> torch.Tensor:
        scores = None
        if self.mining == "hard":
            with torch.no_grad():
                scores = net.head.cross_logits(embeddings, embeddings)
        i, j, target = balanced_pairs(labels, hard_scores=scores)
        if len(i) == 0:
            return embeddings.sum() * 0.0
        logits = net.head.logits(embeddings[i], embeddings[j])
        return F.binary_cross_entropy_with_logits(logits.float(), target)


class MetricLoss:
    """A pytorch-metric-learning loss and miner on L2-normalised embeddings."""

    def __init__(self, loss: Any, miner: Any | None = None):
        self.loss = loss
        self.miner = miner

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor, net: Any) -> torch.Tensor:
        emb = embeddings.float()
        tuples = self.miner(emb, labels) if self.miner is not None else None
        return self.loss(emb, labels, tuples)


def make_objective(loss: str, margin: float, mining: str, temperature: float = 0.1) -> SiameseObjective:
    """The objective for ``--loss``, ``--margin``, ``--mining`` and ``--temperature``.

    contrastive: ``ContrastiveLoss(pos_margin=0, neg_margin=margin)``; miners:
    semihard = ``PairMarginMiner`` (positives farther than 0, negatives
    closer than the margin: the pairs that still cost something), hard =
    ``BatchHardMiner``, all = every pair.
    triplet: ``TripletMarginLoss(margin)``; miners: semihard =
    ``TripletMarginMiner(type_of_triplets="semihard")``, hard =
    ``BatchHardMiner``, all = every triplet.
    supcon: ``SupConLoss(temperature)`` over every pair of the batch (its
    softmax weighs the hard negatives itself, so no miner).
    multisimilarity: ``MultiSimilarityLoss(alpha=2, beta=50, base=0.5)``
    with ``MultiSimilarityMiner(epsilon=margin)`` (the paper's settings).
    """
    if loss == "pair":
        return PairLoss(mining)
    from pytorch_metric_learning import losses, miners

    if loss == "contrastive":
        fn = losses.ContrastiveLoss(pos_margin=0.0, neg_margin=margin)
        miner = {"semihard": miners.PairMarginMiner(pos_margin=0.0, neg_margin=margin),
                 "hard": miners.BatchHardMiner(), "all": None}[mining]
        return MetricLoss(fn, miner)
    if loss == "triplet":
        fn = losses.TripletMarginLoss(margin=margin)
        miner = {"semihard": miners.TripletMarginMiner(margin=margin, type_of_triplets="semihard"),
                 "hard": miners.BatchHardMiner(), "all": None}[mining]
        return MetricLoss(fn, miner)
    if loss == "supcon":
        return MetricLoss(losses.SupConLoss(temperature=temperature))
    if loss == "multisimilarity":
        return MetricLoss(losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5), miners.MultiSimilarityMiner(epsilon=margin))
    raise ValueError(f"unknown loss {loss!r}")
