"""Inference as the field teaches it: encode the input into state vectors, start from <s>, feed the state
and the target so far to the decoder, append the arg-max (greedy) or keep the best K hypotheses (beam),
stop at </s> or ``max_len``.

Both work on a batch of sources at once; each source is decoded independently
of the others (its own state, its own attention mask), so batching or padding
never changes a translation.  ``<pad>``, ``<s>`` and ``<unk>`` are never
emitted.  With ``k=1`` the beam search makes exactly the greedy choices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from transferkit.tasks.seq2seq.model import Seq2Seq, select_state
from transferkit.tasks.seq2seq.vocab import BOS, EOS, PAD, UNK

BANNED = (PAD, BOS, UNK)


@dataclass
class Decoded:
    """Token ids (B, L) (</s> then <pad> after the end), total log-probabilities (B,),
    and, with attention, the weights (B, L, S) of the chosen path (greedy only)."""

    tokens: Tensor
    scores: Tensor
    attention: Optional[Tensor] = None


def _log_probs(logits: Tensor) -> Tensor:
    logp = torch.log_softmax(logits.float(), dim=-1)
    logp[:, list(BANNED)] = float("-inf")
    return logp


@torch.inference_mode()
def greedy(model: Seq2Seq, src: Tensor, src_len: Tensor, max_len: int, keep_attention: bool = False) -> Decoded:
    """Arg-max decoding of a batch: src (B, S) ids, src_len (B,)."""
    mem, state = model.encode(src, src_len)
    B = src.size(0)
    tokens = torch.full((B,), BOS, dtype=torch.long, device=src.device)
    done = torch.zeros(B, dtype=torch.bool, device=src.device)
    scores = torch.zeros(B, device=src.device)
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
def beam_search(model: Seq2Seq, src: Tensor, src_len: Tensor, k: int, max_len: int, alpha: float = 0.0) -> Decoded:
    """Keep the ``k`` most probable hypotheses per source; the best finished one wins.

    A finished hypothesis stays in its slot (extended with <pad> at no cost), so
    it competes with the unfinished ones until the end. ``alpha`` > 0 divides
    final scores by the GNMT length penalty (longer outputs are not unfairly
    penalised for having more factors); it never changes which token the
    search keeps at a step, so ``k=1`` equals :func:`greedy`.
    """
    if k < 1:
        raise ValueError("beam size must be at least 1")
    mem, state = model.encode(src, src_len)
    B, dev = src.size(0), src.device
    rows = torch.arange(B, device=dev).repeat_interleave(k)  # (B*k,) source of each hypothesis
    mem, state = mem.select(rows), select_state(state, rows)
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
        state = select_state(state, (base + beam).view(-1))
        tokens = tok.view(-1)
        if bool(finished.all()):
            break
    final = scores / length_normalizer(lengths.clamp(min=1), alpha) if alpha else scores
    best = final.argmax(1)  # (B,)
    best_score = scores.gather(1, best.unsqueeze(1)).squeeze(1)
    out = torch.empty(B, len(history), dtype=torch.long, device=dev)
    b = best.unsqueeze(1)
    for t in range(len(history) - 1, -1, -1):  # follow the back-pointers from the end
        beam, tok = history[t]
        out[:, t] = tok.gather(1, b).squeeze(1)
        b = beam.gather(1, b)
    return Decoded(out, best_score)


def decode(model: Seq2Seq, src: Tensor, src_len: Tensor, beam: int, max_len: int, alpha: float = 0.0) -> Decoded:
    """Greedy for ``beam`` <= 1, else beam search."""
    if beam <= 1:
        return greedy(model, src, src_len, max_len)
    return beam_search(model, src, src_len, beam, max_len, alpha)
