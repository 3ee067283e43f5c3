"""Greedy and beam-search decoding for any step-by-step token decoder (translation, captioning).

Inference as the field teaches it: encode the input into state vectors, start from <s>, feed the state
and the output so far to the decoder, append the arg-max (greedy) or keep the best K hypotheses (beam),
stop at </s> or ``max_len``.

A decoder is anything with two methods (``seq2seq``'s ``Seq2Seq`` and
``caption``'s ``CaptionNet`` are)::

    encode(*inputs) -> (memory, state)     # inputs[0] has the batch as dimension 0
    step(tokens (B,), state, memory) -> (logits (B, V), new state, attention weights (B, S) or None)

``memory`` is what attention looks at (None without attention) and must offer
``memory.select(rows)``; ``state`` is an RNN state, a tensor ``(layers, B, H)``
or a tuple of them (LSTM), selected by :func:`select_state`.

Both decoders work on a batch at once; each input is decoded independently of
the others, so batching never changes a result.  ``<pad>``, ``<s>`` and
``<unk>`` are never emitted.  With ``k=1`` the beam search makes exactly the
greedy choices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from transferkit.core.vocab import BOS, EOS, PAD, UNK

BANNED = (PAD, BOS, UNK)


@dataclass
class Decoded:
    """Token ids (B, L) (</s> then <pad> after the end), total log-probabilities (B,),
    with attention the weights (B, L, S) of the chosen path (greedy only), and from
    :func:`beam_search` with ``n_best`` > 1 the ``n_best`` best hypotheses (B, N, L)
    with their total log-probabilities (B, N), best first."""

    tokens: Tensor
    scores: Tensor
    attention: Optional[Tensor] = None
    nbest_tokens: Optional[Tensor] = None
    nbest_scores: Optional[Tensor] = None


def select_state(state: Any, idx: Tensor) -> Any:
    """Rows ``idx`` of a recurrent state (the batch is dimension 1)."""
    if isinstance(state, tuple):
        return tuple(s[:, idx] for s in state)
    return state[:, idx]


def _select_memory(mem: Any, idx: Tensor) -> Any:
    return None if mem is None else mem.select(idx)


def _log_probs(logits: Tensor) -> Tensor:
    logp = torch.log_softmax(logits.float(), dim=-1)
    logp[:, list(BANNED)] = float("-inf")
    return logp


@torch.inference_mode()
def greedy(model: Any, inputs: Sequence[Tensor], max_len: int, keep_attention: bool = False) -> Decoded:
    """Arg-max decoding of a batch; ``inputs`` are the arguments of ``model.encode``."""
    mem, state = model.encode(*inputs)
    B, dev = inputs[0].size(0), inputs[0].device
    tokens = torch.full((B,), BOS, dtype=torch.long, device=dev)
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    scores = torch.zeros(B, device=dev)
    out, attn = [], []
    for _ in range(max_len):
        logits, state, weights = model.step(tokens, state, mem)
        logp = _log_probs(logits)
        best, tokens = (t.squeeze(1) for t in logp.topk(1, dim=-1))  # topk, as in beam_search: same tie-breaking
        tokens = tokens.masked_fill(done, PAD)
        scores = scores + best.masked_fill(done, 0.0)
        out.append(tokens)
        if keep_attention and weights is not None:
            attn.append(weights.masked_fill(done.unsqueeze(1), 0.0))
        done = done | (tokens == EOS)
        if bool(done.all()):
            break
    return Decoded(torch.stack(out, 1), scores, torch.stack(attn, 1) if attn else None)


def length_normalizer(length: Tensor, alpha: float) -> Tensor:
    """GNMT length penalty ((5 + length) / 6) ** alpha (1 when alpha is 0)."""
    return ((5.0 + length.float()) / 6.0) ** alpha


@torch.inference_mode()
def beam_search(model: Any, inputs: Sequence[Tensor], k: int, max_len: int, alpha: float = 0.0,
                n_best: int = 1) -> Decoded:
    """Keep the ``k`` most probable hypotheses per input; the best finished one wins.

    A finished hypothesis stays in its slot (extended with <pad> at no cost), so
    it competes with the unfinished ones until the end. ``alpha`` > 0 divides
    final scores by the GNMT length penalty (longer outputs are not unfairly
    penalised for having more factors); it never changes which token the
    search keeps at a step, so ``k=1`` equals :func:`greedy`.  ``n_best`` (at
    most ``k``) also returns that many hypotheses per input, ranked the same way.
    """
    if k < 1:
        raise ValueError("beam size must be at least 1")
    n_best = max(1, min(n_best, k))
    mem, state = model.encode(*inputs)
    B, dev = inputs[0].size(0), inputs[0].device
    rows = torch.arange(B, device=dev).repeat_interleave(k)  # (B*k,) input of each hypothesis
    mem, state = _select_memory(mem, rows), select_state(state, rows)
    scores = torch.full((B, k), float("-inf"), device=dev)
    scores[:, 0] = 0.0  # one live hypothesis at the start: the others would be duplicates
    finished = torch.zeros(B, k, dtype=torch.bool, device=dev)
    lengths = torch.zeros(B, k, device=dev)
    tokens = torch.full((B * k,), BOS, dtype=torch.long, device=dev)
    history: list[tuple[Tensor, Tensor]] = []  # per step: (back-pointer beam, token), each (B, k)
    base = (torch.arange(B, device=dev) * k).unsqueeze(1)
    for _ in range(max_len):
        logits, state, _ = model.step(tokens, state, mem)
        logp = _log_probs(logits).view(B, k, -1)
        V = logp.size(-1)
        # a finished hypothesis may only continue with <pad>, at no cost
        pad_only = torch.full((V,), float("-inf"), device=dev)
        pad_only[PAD] = 0.0
        logp = torch.where(finished.unsqueeze(-1), pad_only, logp)
        # the k best of all k*V extensions are among each hypothesis's own k best tokens
        kk = min(k, V)
        top_lp, top_tok = logp.topk(kk, dim=-1)  # (B, k, kk)
        cand = (scores.unsqueeze(-1) + top_lp).view(B, k * kk)
        scores, flat = cand.topk(k, dim=1)  # (B, k), best first
        beam, tok = flat // kk, top_tok.view(B, k * kk).gather(1, flat)
        was_finished = finished.gather(1, beam)
        lengths = lengths.gather(1, beam) + (~was_finished).float()
        finished = was_finished | (tok == EOS)
        history.append((beam, tok))
        state = select_state(state, (base + beam).view(-1))  # memory needs no reordering: one input per row block
        tokens = tok.view(-1)
        if bool(finished.all()):
            break
    final = scores / length_normalizer(lengths.clamp(min=1), alpha) if alpha else scores
    order = final.argsort(dim=1, descending=True, stable=True)[:, :n_best]  # (B, N); ties: the first, as argmax
    paths = torch.empty(B, n_best, len(history), dtype=torch.long, device=dev)
    b = order
    for t in range(len(history) - 1, -1, -1):  # follow the back-pointers from the end
        beam, tok = history[t]
        paths[:, :, t] = tok.gather(1, b)
        b = beam.gather(1, b)
    best_scores = scores.gather(1, order)  # (B, N) total log-probabilities
    return Decoded(paths[:, 0], best_scores[:, 0], None,
                   paths if n_best > 1 else None, best_scores if n_best > 1 else None)


def decode(model: Any, inputs: Sequence[Tensor], beam: int, max_len: int, alpha: float = 0.0, n_best: int = 1) -> Decoded:
    """Greedy for ``beam`` <= 1, else beam search."""
    if beam <= 1:
        return greedy(model, inputs, max_len)
    return beam_search(model, inputs, beam, max_len, alpha, n_best)
