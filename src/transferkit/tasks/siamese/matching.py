"""How a one-shot decision compares a query with its candidates: mean embeddings, aligned views, local features.

A one-shot task (an N-way episode, one of Lake et al.'s runs) gives each
query the candidate it matches best.  The plain rule compares mean
embeddings; two refinements, each measured in BENCHMARKS.md ("Siamese
one-shot learning") and saved with the model, look closer:

* **aligned views** (``align``): with test-time augmentation an image has
  ``V = 1 + tta`` views (itself and fixed distortions of it).  Instead of
  comparing the two averaged embeddings, the score of (query, candidate) is
  the mean of the ``V`` highest cosine similarities among the ``V x V``
  pairs of their views: the distortions that best line the two drawings up
  count, not their blurred averages;
* **local features** (``local``): the encoder's last feature map (``h x w``
  cells of ``C`` features, averaged over the views), each cell of the query
  matched to its most similar cell of the candidate, and the mean of those
  best matches (the image-to-image form of DN4, Li et al. 2019): a stroke
  that is right but in another place still counts.  It is added to the
  embedding score with this weight, after both are standardised over the
  candidates of the query (z-scores, since their scales differ).

Both use only the query and the labelled candidates (the support set), never
the other queries.  Koch's pair head keeps its learned distance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F


@dataclass
class Embedded:
    """What one-shot matching needs of N images.

    Attributes:
        views: (N, V, D) embeddings of each image's V views (view 0: the image
            itself); unit vectors for metric heads, Koch's features for the pair head.
        maps: (N, C, h, w) the encoder's last feature map, mean over the views
            (None when local matching is off or the encoder has no map).
        kind: ``metric`` or ``pair`` (the model's head).
    """

    views: torch.Tensor
    maps: Optional[torch.Tensor] = None
    kind: str = "metric"

    @classmethod
    def of(cls, emb: "torch.Tensor | Embedded", kind: str = "metric") -> "Embedded":
        """Wrap plain (N, D) embeddings as one view each (an :class:`Embedded` passes through)."""
        return emb if isinstance(emb, Embedded) else cls(emb[:, None, :], None, kind)

    def __len__(self) -> int:
        return len(self.views)

    def take(self, index: Any) -> "Embedded":
        """The rows ``index`` (a tensor or array of indices)."""
        index = torch.as_tensor(index)
        return Embedded(self.views[index], None if self.maps is None else self.maps[index], self.kind)

    def mean(self) -> torch.Tensor:
        """(N, D) one embedding per image: the mean over its views (renormalised for metric heads)."""
        m = self.views.mean(dim=1)
        return F.normalize(m, dim=-1) if self.kind == "metric" else m


def standardise(s: torch.Tensor) -> torch.Tensor:
    """Each row of scores (queries x candidates) as z-scores over its candidates."""
    return (s - s.mean(dim=1, keepdim=True)) / (s.std(dim=1, keepdim=True) + 1e-6)


def aligned_view_similarity(query: torch.Tensor, support: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """(nq, V, D), (ns, V, D) unit views -> (nq, ns): mean of the V best of the V x V view similarities."""
    top = support.shape[1]
    rows = []
    for i in range(0, len(query), chunk):
        sim = torch.einsum("ikd,jld->ijkl", query[i:i + chunk], support).flatten(2)  # (chunk, ns, V*V)
        rows.append(sim.topk(min(top, sim.shape[-1]), dim=-1).values.mean(dim=-1))
    return torch.cat(rows) if rows else query.new_zeros(0, len(support))


def local_similarity(query: torch.Tensor, support: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """(nq, C, h, w), (ns, C, h, w) feature maps -> (nq, ns): each query cell's best cosine match, averaged.

    Cells are centred on the support set's mean cell first, so features every
    cell shares (the background) do not make all matches look alike.
    """
    q = query.float().flatten(2).transpose(1, 2)  # (nq, P, C)
    s = support.float().flatten(2).transpose(1, 2)  # (ns, P, C)
    mu = s.mean(dim=(0, 1), keepdim=True)
    q, s = F.normalize(q - mu, dim=-1), F.normalize(s - mu, dim=-1)
    rows = []
    for i in range(0, len(q), chunk):
        sim = torch.einsum("ipc,jqc->ijpq", q[i:i + chunk], s)  # (chunk, ns, P, P)
        rows.append(sim.amax(dim=-1).mean(dim=-1))
    return torch.cat(rows) if rows else q.new_zeros(0, len(s))


@dataclass(frozen=True)
class Matching:
    """How one-shot tasks score a query against its candidates (see the module docstring).

    Attributes:
        center: subtract the support set's mean embedding before comparing (metric heads).
        align: aligned views instead of mean embeddings (metric heads with test-time augmentation).
        local: weight of the local-feature match (0: off).
    """

    center: bool = False
    align: bool = False
    local: float = 0.0

    @property
    def plain(self) -> bool:
        """True when scores are (minus) the distances of mean embeddings."""
        return not self.align and not self.local > 0

    def scores(self, query: Embedded, support: Embedded,
               cdist: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
        """(nq, ns) match scores, higher = more alike.

        ``cdist``: the model's distance, used for the pair head (whose scores
        are minus its learned distance; the refinements apply to metric heads only).
        """
        if query.kind == "pair":
            return -(cdist or torch.cdist)(query.mean(), support.mean())
        mu = support.mean().mean(dim=0, keepdim=True) if self.center else 0.0  # (1, D)
        if self.align and query.views.shape[1] > 1:
            score = aligned_view_similarity(F.normalize(query.views.float() - mu, dim=-1),
                                            F.normalize(support.views.float() - mu, dim=-1))
        else:
            # cosine of unit vectors: the same ranking as their Euclidean distance
            score = F.normalize(query.mean() - mu, dim=-1) @ F.normalize(support.mean() - mu, dim=-1).T
        if self.local > 0 and query.maps is not None and support.maps is not None and len(support) > 1:
            score = standardise(score) + self.local * standardise(local_similarity(query.maps, support.maps))
        return score
