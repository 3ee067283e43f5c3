"""The encoder-decoder network: embeddings, a recurrent encoder, optional attention, a recurrent decoder.

Read top to bottom: the two attention blocks, then the encoder, the decoder
and the :class:`Seq2Seq` network that joins them. Shapes use B = batch,
S = source length, T = target length, E = embedding size, H = hidden size,
M = size of one encoder output (H, or 2H when bidirectional), V = vocabulary.

* ``attention="none"`` is the classic Keras/Sutskever model: the encoder's
  final state is the decoder's initial state and the only thing it knows of
  the input.
* ``"additive"`` (Bahdanau et al. 2015): before each step, the previous
  decoder state scores every encoder output with ``v . tanh(Wq s + Wk h)``;
  the weighted sum (context) is fed into the RNN with the previous token.
* ``"dot"`` (Luong et al. 2015, "general" score, scaled): after each step,
  the new decoder state scores the encoder outputs with ``s . Wk h / sqrt(H)``;
  context and state are merged by ``tanh(Wc [s; c])`` before the output layer.
  No context is fed back, so teacher-forced training runs the decoder RNN
  over the whole target at once (much faster than a Python loop on a CPU).

Padding never changes a result: the encoder runs on packed sequences (its
final state is that of the last real token) and attention masks padded
positions with -inf.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Optional

import torch
from torch import Tensor, nn

from transferkit.core.rnn import GRU, LSTM
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from transferkit.core.decoding import select_state  # noqa: F401  (re-exported: decoding reorders states)
from transferkit.core.vocab import PAD

Cell = Literal["lstm", "gru"]
Attention = Literal["none", "additive", "dot"]
State = Any  # (h, c) for an LSTM, h for a GRU; each (layers, B, H)


# --------------------------------------------------------------------------- attention


class AdditiveAttention(nn.Module):
    """Bahdanau scores ``v . tanh(Wq q + Wk m)``."""

    def __init__(self, query_dim: int, mem_dim: int, attn_dim: int):
        super().__init__()
        self.wq = nn.Linear(query_dim, attn_dim, bias=False)
        self.wk = nn.Linear(mem_dim, attn_dim)
        self.v = nn.Linear(attn_dim, 1, bias=False)

    def keys(self, memory: Tensor) -> Tensor:
        """(B, S, M) -> (B, S, A), computed once per source, reused at every step."""
        return self.wk(memory)

    def forward(self, query: Tensor, keys: Tensor, memory: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """query (B, Tq, Dq), mask (B, S) True on real tokens -> context (B, Tq, M), weights (B, Tq, S)."""
        scores = self.v(torch.tanh(keys.unsqueeze(1) + self.wq(query).unsqueeze(2))).squeeze(-1)  # (B, Tq, S)
        weights = scores.masked_fill(~mask.unsqueeze(1), float("-inf")).softmax(-1)
        return weights @ memory, weights


class DotAttention(nn.Module):
    """Luong "general" scores ``q . Wk m``, scaled by 1/sqrt(query size)."""

    def __init__(self, query_dim: int, mem_dim: int):
        super().__init__()
        self.wk = nn.Linear(mem_dim, query_dim, bias=False)
        self.scale = 1.0 / math.sqrt(query_dim)

    def keys(self, memory: Tensor) -> Tensor:
        """(B, S, M) -> (B, S, Dq)."""
        return self.wk(memory)

    def forward(self, query: Tensor, keys: Tensor, memory: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        scores = (query @ keys.transpose(1, 2)) * self.scale  # (B, Tq, S)
        weights = scores.masked_fill(~mask.unsqueeze(1), float("-inf")).softmax(-1)
        return weights @ memory, weights


# --------------------------------------------------------------------------- encoder


def _rnn(cell: Cell, input_size: int, hidden: int, layers: int, dropout: float, bidirectional: bool = False) -> nn.RNNBase:
    cls = LSTM if cell == "lstm" else GRU
    return cls(input_size, hidden, layers, batch_first=True, bidirectional=bidirectional,
               dropout=dropout if layers > 1 else 0.0)


@dataclass
class Memory:
    """What the decoder may look at: encoder outputs (B, S, M), their attention keys, and the mask (B, S)."""

    outputs: Tensor
    keys: Optional[Tensor]
    mask: Tensor

    def select(self, idx: Tensor) -> "Memory":
        """Rows ``idx`` (beam search repeats and reorders sources)."""
        return Memory(self.outputs[idx], None if self.keys is None else self.keys[idx], self.mask[idx])


class Encoder(nn.Module):
    """Embedding + (bi)directional LSTM/GRU over packed sequences."""

    def __init__(self, vocab_size: int, embed: int, hidden: int, layers: int, cell: Cell, bidirectional: bool, dropout: float):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed, padding_idx=PAD)
        self.rnn = _rnn(cell, embed, hidden, layers, dropout, bidirectional)
        self.drop = nn.Dropout(dropout)
        self.out_dim = hidden * (2 if bidirectional else 1)

    def forward(self, src: Tensor, src_len: Tensor) -> tuple[Tensor, State]:
        """src (B, S) ids, src_len (B,) -> outputs (B, S, M) (zeros on padding), final state (layers*dirs, B, H)."""
        x = self.drop(self.embed(src))
        packed = pack_padded_sequence(x, src_len.cpu(), batch_first=True, enforce_sorted=False)
        out, state = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=src.size(1))
        return out, state


# --------------------------------------------------------------------------- decoder


class Decoder(nn.Module):
    """Embedding + LSTM/GRU + (optional) attention + output layer over the target vocabulary."""

    def __init__(self, vocab_size: int, embed: int, hidden: int, layers: int, cell: Cell, attention: Attention,
                 mem_dim: int, dropout: float):
        super().__init__()
        self.attention = attention
        self.embed = nn.Embedding(vocab_size, embed, padding_idx=PAD)
        self.rnn = _rnn(cell, embed + (mem_dim if attention == "additive" else 0), hidden, layers, dropout)
        self.attn: nn.Module | None = None
        if attention == "additive":
            self.attn = AdditiveAttention(hidden, mem_dim, hidden)
        elif attention == "dot":
            self.attn = DotAttention(hidden, mem_dim)
        # attentional vector tanh(Wc [s; c]) (Luong eq. 5); without attention the RNN output feeds the softmax
        self.combine = nn.Linear(hidden + mem_dim, hidden) if self.attn is not None else None
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, vocab_size)

    def _top(self, state: State) -> Tensor:
        """The last layer's hidden state (B, H): the additive attention's query."""
        h = state[0] if isinstance(state, tuple) else state
        return h[-1]

    def _merge(self, out: Tensor, ctx: Tensor) -> Tensor:
        return torch.tanh(self.combine(torch.cat([out, ctx], -1)))

    def forward(self, tgt_in: Tensor, state: State, mem: Memory) -> Tensor:
        """Teacher forcing: tgt_in (B, T) starts with <s> -> logits (B, T, V)."""
        emb = self.drop(self.embed(tgt_in))  # (B, T, E)
        if self.attention == "additive":
            feats = []
            for t in range(tgt_in.size(1)):  # the context depends on the previous state: one step at a time
                ctx, _ = self.attn(self._top(state).unsqueeze(1), mem.keys, mem.outputs, mem.mask)  # (B, 1, M)
                out, state = self.rnn(torch.cat([emb[:, t : t + 1], ctx], -1), state)
                feats.append(self._merge(out, ctx))
            feat = torch.cat(feats, 1)
        else:
            out, _ = self.rnn(emb, state)  # (B, T, H), whole target at once
            if self.attention == "dot":
                ctx, _ = self.attn(out, mem.keys, mem.outputs, mem.mask)
                feat = self._merge(out, ctx)
            else:
                feat = out
        return self.out(self.drop(feat))

    def step(self, tokens: Tensor, state: State, mem: Memory) -> tuple[Tensor, State, Optional[Tensor]]:
        """One decoding step: tokens (B,) -> logits (B, V), new state, attention weights (B, S) or None."""
        emb = self.embed(tokens).unsqueeze(1)  # (B, 1, E)
        weights = None
        if self.attention == "additive":
            ctx, weights = self.attn(self._top(state).unsqueeze(1), mem.keys, mem.outputs, mem.mask)
            out, state = self.rnn(torch.cat([emb, ctx], -1), state)
            feat = self._merge(out, ctx)
        else:
            out, state = self.rnn(emb, state)
            if self.attention == "dot":
                ctx, weights = self.attn(out, mem.keys, mem.outputs, mem.mask)
                feat = self._merge(out, ctx)
            else:
                feat = out
        return self.out(feat.squeeze(1)), state, None if weights is None else weights.squeeze(1)


# --------------------------------------------------------------------------- the network


class Seq2Seq(nn.Module):
    """Encoder-decoder translation network (see the module docstring).

    Args:
        src_vocab, tgt_vocab: vocabulary sizes (specials included).
        cell: ``lstm`` or ``gru``; hidden: units per layer; layers: stacked layers (encoder and decoder).
        attention: ``none``, ``additive`` or ``dot``.
        embed: embedding size; bidirectional: bidirectional encoder (its two final
            states are merged by a learned bridge into the decoder's initial state).
        dropout: on embeddings, between layers and before the output layer.
    """

    def __init__(self, src_vocab: int, tgt_vocab: int, cell: Cell = "lstm", hidden: int = 256, layers: int = 1,
                 attention: Attention = "none", embed: int = 256, bidirectional: bool = False, dropout: float = 0.0):
        super().__init__()
        if cell not in ("lstm", "gru"):
            raise ValueError(f"unknown cell {cell!r}")
        if attention not in ("none", "additive", "dot"):
            raise ValueError(f"unknown attention {attention!r}")
        self.cell, self.layers, self.hidden, self.bidirectional = cell, layers, hidden, bidirectional
        self.encoder = Encoder(src_vocab, embed, hidden, layers, cell, bidirectional, dropout)
        self.decoder = Decoder(tgt_vocab, embed, hidden, layers, cell, attention, self.encoder.out_dim, dropout)
        # bidirectional: [forward; backward] final states (2H) -> decoder initial state (H), per layer
        n_bridges = (2 if cell == "lstm" else 1) if bidirectional else 0
        self.bridge = nn.ModuleList(nn.Linear(2 * hidden, hidden) for _ in range(n_bridges))

    def _bridge(self, state: State) -> State:
        if not self.bidirectional:
            return state
        parts = state if isinstance(state, tuple) else (state,)
        merged = []
        for s, lin in zip(parts, self.bridge):
            L, B, H = self.layers, s.size(1), self.hidden
            both = s.view(L, 2, B, H).transpose(1, 2).reshape(L, B, 2 * H)  # (layers, B, [fwd; bwd])
            merged.append(torch.tanh(lin(both)))
        return tuple(merged) if isinstance(state, tuple) else merged[0]

    def encode(self, src: Tensor, src_len: Tensor) -> tuple[Memory, State]:
        """src (B, S), src_len (B,) -> the decoder's memory and initial state."""
        outputs, state = self.encoder(src, src_len)
        mask = torch.arange(src.size(1), device=src.device).unsqueeze(0) < src_len.to(src.device).unsqueeze(1)
        attn = self.decoder.attn
        keys = attn.keys(outputs) if attn is not None else None
        return Memory(outputs, keys, mask), self._bridge(state)

    def forward(self, src: Tensor, src_len: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced logits (B, T, V) for the target inputs ``tgt_in`` (<s> y1 ... yn, padded)."""
        mem, state = self.encode(src, src_len)
        return self.decoder(tgt_in, state, mem)

    def step(self, tokens: Tensor, state: State, mem: Memory) -> tuple[Tensor, State, Optional[Tensor]]:
        """One decoding step (see :meth:`Decoder.step`)."""
        return self.decoder.step(tokens, state, mem)
