"""Greedy and beam search for translation: :mod:`transferkit.core.decoding` (shared with ``caption``),
called with a source batch ``src (B, S)`` and its lengths ``src_len (B,)``.

Each source is decoded independently of the others (its own state, its own
attention mask), so batching or padding never changes a translation.
``<pad>``, ``<s>`` and ``<unk>`` are never emitted.  With ``k=1`` the beam
search makes exactly the greedy choices.
"""

from __future__ import annotations

from torch import Tensor

from transferkit.core import decoding
from transferkit.core.decoding import BANNED, Decoded, length_normalizer  # noqa: F401
from transferkit.tasks.seq2seq.model import Seq2Seq


def greedy(model: Seq2Seq, src: Tensor, src_len: Tensor, max_len: int, keep_attention: bool = False) -> Decoded:
    """Arg-max decoding of a batch: src (B, S) ids, src_len (B,)."""
    return decoding.greedy(model, (src, src_len), max_len, keep_attention)


def beam_search(model: Seq2Seq, src: Tensor, src_len: Tensor, k: int, max_len: int, alpha: float = 0.0) -> Decoded:
    """Keep the ``k`` most probable hypotheses per source; the best finished one wins (see
    :func:`transferkit.core.decoding.beam_search`)."""
    return decoding.beam_search(model, (src, src_len), k, max_len, alpha)


def decode(model: Seq2Seq, src: Tensor, src_len: Tensor, beam: int, max_len: int, alpha: float = 0.0) -> Decoded:
    """Greedy for ``beam`` <= 1, else beam search."""
    return decoding.decode(model, (src, src_len), beam, max_len, alpha)
