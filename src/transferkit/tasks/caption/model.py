"""The captioning network: a pretrained CNN encoder, then an LSTM/GRU decoder with or without soft attention.

Read top to bottom: the image encoder, soft attention, the decoder, and the
:class:`CaptionModel` that holds both (what a model directory saves).  Shapes
use B = batch, F = CNN feature channels, S = spatial positions (G*G), T =
caption length, E = word-embedding size, H = hidden size, V = vocabulary.

* ``attention="none"``: Show and Tell (Vinyals et al. 2015).  The pooled CNN
  vector, projected to E, is the RNN's first input (time -1); then <s> and the
  caption words follow (teacher forcing).  Teacher-forced training runs the RNN
  over the whole sequence at once.
* ``attention="soft"``: Show, Attend and Tell (Xu et al. 2015).  The initial
  state is computed from the mean of the G x G feature map; before each step
  the previous hidden state scores every position with ``v . tanh(Wh h + Wa a)``,
  the weighted sum (context) is scaled by a learned gate ``sigmoid(Wb h)`` and fed
  into the RNN with the previous word; the output uses ``h`` and the context.
* ``tie_weights``: the output layer (E -> V) *is* the word-embedding matrix
  (Press & Wolf 2017, Inan et al. 2017): V*E fewer parameters.  Both variants
  project the RNN output to E before the output layer, so they differ only in
  the sharing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transferkit.core.rnn import GRU, LSTM
from transferkit.core.vocab import PAD

Cell = Literal["lstm", "gru"]
Attention = Literal["none", "soft"]
State = Any  # (h, c) for an LSTM, h for a GRU; each (1, B, H)


# --------------------------------------------------------------------------- image encoder


class ImageEncoder(nn.Module):
    """A timm backbone read as ``pooled`` vectors (B, F) or a ``grid`` of G x G positions (B, F, G*G).

    The feature map is the backbone's last (``forward_features``); ``pooled`` is
    its mean (what timm's classifier sees), ``grid`` its adaptive average to G x G.
    """

    def __init__(self, backbone: nn.Module, grid: int = 7):
        super().__init__()
        self.backbone = backbone
        self.grid = int(grid)
        self.num_features = int(backbone.num_features)

    def feature_map(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, F, h, w)."""
        return self.backbone.forward_features(x)

    def embed(self, x: Tensor, layer: str = "pooled") -> Tensor:
        fmap = self.feature_map(x)
        if fmap.ndim == 3:  # a transformer's tokens (B, L, F): pooled only
            if layer == "grid":
                raise ValueError("soft attention needs a CNN feature map (B, F, h, w)")
            return fmap.mean(1)
        if layer == "grid":
            return F.adaptive_avg_pool2d(fmap, self.grid).flatten(2)  # (B, F, S)
        return fmap.mean(dim=(2, 3))  # (B, F)

    def forward(self, x: Tensor) -> Tensor:
        return self.embed(x, "pooled")


class Standardize(nn.Module):
    """``(x - mean) / std`` per feature channel, with statistics of the training images set once before
    training (:meth:`set_stats`) and saved with the model.  Frozen CNN features differ between images by
    small amounts on large per-channel offsets; standardised, the decoder sees those differences at once."""

    def __init__(self, n: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("std", torch.ones(n))

    @torch.no_grad()
    def set_stats(self, feats: Tensor) -> None:
        """feats (N, F) or (N, F, S): statistics per channel F."""
        x = feats.float().transpose(0, 1).reshape(feats.size(1), -1)  # (F, N*S)
        self.mean.copy_(x.mean(1))
        self.std.copy_(x.std(1).clamp(min=1e-6))

    def forward(self, x: Tensor) -> Tensor:  # (..., F) -> (..., F)
        return (x - self.mean) / self.std


# --------------------------------------------------------------------------- attention


class SoftAttention(nn.Module):
    """Show-Attend-Tell's f_att: ``v . tanh(Wh h + Wa a_i)``, softmax over the S positions."""

    def __init__(self, hidden: int, feat_dim: int, attn_dim: int):
        super().__init__()
        self.wh = nn.Linear(hidden, attn_dim, bias=False)
        self.wa = nn.Linear(feat_dim, attn_dim)
        self.v = nn.Linear(attn_dim, 1, bias=False)

    def keys(self, feats: Tensor) -> Tensor:
        """(B, S, F) -> (B, S, A), computed once per image."""
        return self.wa(feats)

    def forward(self, h: Tensor, keys: Tensor, feats: Tensor) -> tuple[Tensor, Tensor]:
        """h (B, H) -> context (B, F), weights (B, S)."""
        scores = self.v(torch.tanh(keys + self.wh(h).unsqueeze(1))).squeeze(-1)  # (B, S)
        weights = scores.softmax(-1)
        return (weights.unsqueeze(1) @ feats).squeeze(1), weights


@dataclass
class Memory:
    """What the attention decoder looks at: the feature map (B, S, F) and its keys (B, S, A)."""

    feats: Tensor
    keys: Tensor

    def select(self, idx: Tensor) -> "Memory":
        """Rows ``idx`` (beam search repeats each image K times)."""
        return Memory(self.feats[idx], self.keys[idx])


# --------------------------------------------------------------------------- decoder


class CaptionDecoder(nn.Module):
    """Word embedding + LSTM/GRU (+ soft attention) + projection to E + output layer over the vocabulary.

    Args:
        vocab_size: words, specials included.
        feat_dim: F, channels of the CNN features.
        cell: ``lstm`` or ``gru``; hidden: H; embed: E.
        attention: ``none`` (Show and Tell, pooled features) or ``soft``
            (Show, Attend and Tell, a (B, F, S) feature map).
        tie_weights: share the embedding matrix with the output layer.
        dropout: on the image and word embeddings and before the output layer.
    """

    def __init__(self, vocab_size: int, feat_dim: int, cell: Cell = "lstm", attention: Attention = "none",
                 embed: int = 256, hidden: int = 512, tie_weights: bool = False, dropout: float = 0.3):
        super().__init__()
        if cell not in ("lstm", "gru"):
            raise ValueError(f"unknown cell {cell!r}")
        if attention not in ("none", "soft"):
            raise ValueError(f"unknown attention {attention!r}")
        self.cell, self.attention, self.hidden = cell, attention, hidden
        rnn = LSTM if cell == "lstm" else GRU  # nn.LSTM / nn.GRU, trainable under bf16 on any CPU
        self.embed = nn.Embedding(vocab_size, embed, padding_idx=PAD)
        self.feat_norm = Standardize(feat_dim)  # set from the training images' features before training
        self.drop = nn.Dropout(dropout)
        if attention == "none":
            self.img_embed = nn.Linear(feat_dim, embed)  # the image as the first "word"
            self.rnn = rnn(embed, hidden, batch_first=True)
            self.proj = nn.Linear(hidden, embed)
        else:
            self.init_h = nn.Linear(feat_dim, hidden)
            self.init_c = nn.Linear(feat_dim, hidden) if cell == "lstm" else None
            self.attn = SoftAttention(hidden, feat_dim, hidden)
            self.gate = nn.Linear(hidden, feat_dim)  # beta = sigmoid(W h): how much of the context to let in
            self.rnn = rnn(embed + feat_dim, hidden, batch_first=True)
            self.proj = nn.Linear(hidden + feat_dim, embed)  # deep output: from h and the context
        self.out = nn.Linear(embed, vocab_size)
        self.tied = bool(tie_weights)
        if self.tied:
            self.out.weight = self.embed.weight  # one tensor (V, E): the embedding is the output layer

    # ------------------------------------------------------------ encoding

    def encode(self, feats: Tensor) -> tuple[Optional[Memory], State]:
        """Features (B, F) [none] or (B, F, S) [soft] -> (memory, initial state)."""
        if self.attention == "none":
            x = self.drop(self.img_embed(self.feat_norm(feats))).unsqueeze(1)  # (B, 1, E)
            _, state = self.rnn(x)  # the image is the input at time -1
            return None, state
        a = self.feat_norm(feats.transpose(1, 2))  # (B, S, F)
        mean = a.mean(1)  # (B, F)
        h = torch.tanh(self.init_h(mean)).unsqueeze(0)  # (1, B, H)
        state = (h, torch.tanh(self.init_c(mean)).unsqueeze(0)) if self.cell == "lstm" else h
        return Memory(a, self.attn.keys(a)), state

    def _logits(self, feat: Tensor) -> Tensor:
        return self.out(self.drop(self.proj(feat)))

    def _top(self, state: State) -> Tensor:
        return (state[0] if isinstance(state, tuple) else state)[-1]  # (B, H)

    # ------------------------------------------------------------ teacher forcing and one step

    def forward(self, feats: Tensor, tgt_in: Tensor, return_attention: bool = False):
        """Teacher forcing: tgt_in (B, T) starts with <s> -> logits (B, T, V) (and weights (B, T, S) for soft)."""
        mem, state = self.encode(feats)
        emb = self.drop(self.embed(tgt_in))  # (B, T, E)
        if self.attention == "none":
            out, _ = self.rnn(emb, state)  # (B, T, H), whole caption at once
            logits = self._logits(out)
            return (logits, None) if return_attention else logits
        outs, alphas = [], []
        for t in range(tgt_in.size(1)):  # the context depends on the previous state: one step at a time
            logits, state, weights = self._step_emb(emb[:, t], state, mem)
            outs.append(logits)
            alphas.append(weights)
        logits = torch.stack(outs, 1)
        return (logits, torch.stack(alphas, 1)) if return_attention else logits

    def _step_emb(self, emb: Tensor, state: State, mem: Memory) -> tuple[Tensor, State, Tensor]:
        h = self._top(state)
        ctx, weights = self.attn(h, mem.keys, mem.feats)  # (B, F), (B, S)
        ctx = torch.sigmoid(self.gate(h)) * ctx
        out, state = self.rnn(torch.cat([emb, ctx], -1).unsqueeze(1), state)  # (B, 1, H)
        return self._logits(torch.cat([out.squeeze(1), ctx], -1)), state, weights

    def step(self, tokens: Tensor, state: State, mem: Optional[Memory]) -> tuple[Tensor, State, Optional[Tensor]]:
        """One decoding step: tokens (B,) -> logits (B, V), new state, attention weights (B, S) or None."""
        emb = self.embed(tokens)  # (B, E)
        if self.attention == "none":
            out, state = self.rnn(emb.unsqueeze(1), state)
            return self._logits(out.squeeze(1)), state, None
        return self._step_emb(emb, state, mem)


# --------------------------------------------------------------------------- the saved model


class CaptionModel(nn.Module):
    """Image encoder + caption decoder: what ``model.safetensors`` holds.

    Training usually sees cached encoder features only; the encoder is kept so
    a model directory captions images by itself.
    """

    def __init__(self, encoder: ImageEncoder, decoder: CaptionDecoder):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    @property
    def layer(self) -> str:
        """Which encoder output the decoder reads: ``pooled`` or ``grid``."""
        return "grid" if self.decoder.attention == "soft" else "pooled"

    def features(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) preprocessed images -> the decoder's input features."""
        return self.encoder.embed(images, self.layer)

    def forward(self, images: Tensor, tgt_in: Tensor) -> Tensor:
        return self.decoder(self.features(images), tgt_in)


def count_parameters(module: nn.Module) -> int:
    """Distinct parameters (a tied tensor counts once)."""
    return sum(p.numel() for p in module.parameters())  # parameters() yields a shared tensor once
