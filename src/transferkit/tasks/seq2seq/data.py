"""Sentence pairs for training: a seeded split that keeps each source sentence on one side,
encoded tensors, length-bucketed batches and padding.

Tatoeba-style files list one English sentence with several translations on
consecutive lines; a plain random split would put "Go." -> "Va !" in training
and "Go." -> "Marche." in validation and measure memory rather than
translation.  :func:`split_pairs` therefore assigns every *source sentence*
(with all its translations) to one side, by a seeded hash of its text: a
pair's side does not depend on which other pairs were read (``--max-pairs``),
so a smaller set's held-out pairs are the held-out pairs of a larger one.
"""

from __future__ import annotations

import hashlib
from typing import Iterator, Sequence

import torch
from torch import Tensor

from transferkit.errors import TransferkitError
from transferkit.tasks.seq2seq.vocab import PAD, Vocab, normalize


def _unit_hash(text: str, seed: int, salt: str) -> float:
    digest = hashlib.blake2b(f"{salt}\x00{seed}\x00{text}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def split_pairs(pairs: Sequence[tuple[str, str]], fraction: float, seed: int, salt: str = "val") -> tuple[list[int], list[int]]:
    """Indices (kept, held_out): about ``fraction`` of the distinct source sentences go to held_out.

    Both parts are non-empty when there are at least two distinct sources.
    Different ``salt`` values give independent splits (e.g. a test set cut off
    before ``fit`` makes its own validation split).
    """
    if not 0.0 < fraction < 1.0:
        raise TransferkitError(f"The held-out fraction must be between 0 and 1 (got {fraction}).")
    keys = [normalize(s) for s, _ in pairs]
    h = {k: _unit_hash(k, seed, salt) for k in set(keys)}
    if len(h) < 2:
        raise TransferkitError("Need at least two different source sentences to make a validation split.")
    held = {k for k, v in h.items() if v < fraction}
    if not held:  # tiny sets: hold out the source with the smallest hash
        held = {min(h, key=h.get)}
    if len(held) == len(h):
        held.discard(max(h, key=h.get))
    kept_idx = [i for i, k in enumerate(keys) if k not in held]
    held_idx = [i for i, k in enumerate(keys) if k in held]
    return kept_idx, held_idx


class PairDataset(torch.utils.data.Dataset):
    """Pairs encoded once: source ids, and target ids framed as ``<s> y1 .. yn </s>``."""

    def __init__(self, pairs: Sequence[tuple[str, str]], src_vocab: Vocab, tgt_vocab: Vocab):
        self.pairs = list(pairs)
        self.src = [torch.tensor(src_vocab.encode(s) or [PAD], dtype=torch.long) for s, _ in self.pairs]
        self.tgt = [torch.tensor(tgt_vocab.encode(t, bos=True, eos=True), dtype=torch.long) for _, t in self.pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, int]:
        return self.src[i], self.tgt[i], i

    def lengths(self) -> list[tuple[int, int]]:
        return [(len(s), len(t)) for s, t in zip(self.src, self.tgt)]


def pad_batch(seqs: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Right-pad id sequences with <pad>: -> ids (B, L), lengths (B,)."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    out = torch.full((len(seqs), int(lengths.max())), PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out, lengths


def collate(batch: Sequence[tuple[Tensor, Tensor, int]]) -> dict[str, Tensor]:
    """-> src (B, S), src_len (B,), tgt_in (B, T) = <s> y1..yn, tgt_out (B, T) = y1..yn </s>, index (B,)."""
    src, src_len = pad_batch([b[0] for b in batch])
    tgt, _ = pad_batch([b[1] for b in batch])
    index = torch.tensor([b[2] for b in batch], dtype=torch.long)
    return {"src": src, "src_len": src_len, "tgt_in": tgt[:, :-1], "tgt_out": tgt[:, 1:], "index": index}


class BucketBatchSampler(torch.utils.data.Sampler):
    """Batches of pairs of similar length (little padding), in a seeded random order each epoch.

    The shuffled pairs are cut into pools of ``pool`` batches; each pool is
    sorted by (source, target) length and cut into batches; the batches are
    shuffled.  Without ``shuffle``, one global length sort.  Under DDP each
    training process takes every world-th batch (the same number on every process).
    """

    def __init__(self, lengths: Sequence[tuple[int, int]], batch_size: int, shuffle: bool, seed: int = 0, pool: int = 50):
        self.lengths = list(lengths)
        self.batch_size = max(1, int(batch_size))
        self.shuffle = shuffle
        self.seed = seed
        self.pool = pool
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of each epoch (also makes resumed runs reproducible)."""
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        n, bs = len(self.lengths), self.batch_size
        if not self.shuffle:
            order = sorted(range(n), key=lambda i: self.lengths[i])
            return [order[i : i + bs] for i in range(0, n, bs)]
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        perm = torch.randperm(n, generator=g).tolist()
        batches: list[list[int]] = []
        step = bs * self.pool
        for start in range(0, n, step):
            chunk = sorted(perm[start : start + step], key=lambda i: self.lengths[i])
            batches.extend(chunk[i : i + bs] for i in range(0, len(chunk), bs))
        order = torch.randperm(len(batches), generator=g).tolist()
        return [batches[i] for i in order]

    @staticmethod
    def _world() -> tuple[int, int]:
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            return 1, 0
        return dist.get_world_size(), dist.get_rank()

    def _shard(self, batches: list[list[int]]) -> list[list[int]]:
        """Training under DDP: every world-th batch, the same count on every process (DDP's gradient
        all-reduce needs equal steps); with fewer batches than processes, an equal share of the pairs.
        Validation (no shuffle) is not sharded: each process scores every held-out pair, so the
        corpus-level chrF/BLEU are exact and equal on every process."""
        world, rank = self._world()
        if world == 1 or not self.shuffle:
            return batches
        per = len(batches) // world
        if per == 0:
            flat = [i for b in batches for i in b]
            k = len(flat) // world
            return [flat[rank * k:(rank + 1) * k]] if k else []
        return batches[rank::world][:per]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._shard(self._batches())
        if self.shuffle:
            self.epoch += 1  # a new order next time even if nobody calls set_epoch
        return iter(batches)

    def __len__(self) -> int:
        n = (len(self.lengths) + self.batch_size - 1) // self.batch_size
        if self.shuffle:  # pools may end with a short batch each
            step = self.batch_size * self.pool
            n = sum((min(step, len(self.lengths) - s) + self.batch_size - 1) // self.batch_size for s in range(0, len(self.lengths), step))
        world, _ = self._world()
        if world > 1 and self.shuffle:
            k = len(self.lengths) // world
            n = n // world if n >= world else int(k > 0)
        return n
