"""Recurrent layers that train under a forced ``--precision bf16`` on every CPU.

oneDNN has no bf16 LSTM/GRU on CPUs without native bf16 (AVX2 only): under CPU bf16 autocast the layer
fails with "could not create a primitive descriptor for the LSTM forward propagation primitive". There
:class:`LSTM` and :class:`GRU` run the recurrent layer in fp32 (the rest of the network stays bf16); on
CPUs with native bf16, on GPUs and without autocast they are exactly ``nn.LSTM`` / ``nn.GRU`` (same
parameters, same state dict).
"""

from __future__ import annotations

import torch
from torch import nn


def _float(x):
    """Tensors, packed sequences and (h, c) tuples as float32."""
    if x is None:
        return None
    if isinstance(x, nn.utils.rnn.PackedSequence):
        return x._replace(data=x.data.float())
    if isinstance(x, tuple):
        return tuple(_float(t) for t in x)
    return x.float()


def _on_cpu(x) -> bool:
    data = x.data if isinstance(x, nn.utils.rnn.PackedSequence) else x
    return data.device.type == "cpu"


def _native_bf16() -> bool:
    from transferkit.core.inference import cpu_supports_bf16

    return cpu_supports_bf16()


class _EmulatedBF16Guard:
    def forward(self, input, hx=None):  # noqa: A002 - nn.RNNBase's own argument name
        if _on_cpu(input) and torch.is_autocast_enabled("cpu") and not _native_bf16():
            with torch.autocast("cpu", enabled=False):
                return super().forward(_float(input), _float(hx))
        return super().forward(input, hx)


class LSTM(_EmulatedBF16Guard, nn.LSTM):
    """``nn.LSTM`` that runs in fp32 under CPU bf16 autocast where oneDNN cannot run it in bf16."""


class GRU(_EmulatedBF16Guard, nn.GRU):
    """``nn.GRU`` that runs in fp32 under CPU bf16 autocast where oneDNN cannot run it in bf16."""
