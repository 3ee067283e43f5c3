"""Vocabularies: text <-> token ids, at character or word level, saved inside the model's config.json.

Four special tokens come first, at fixed ids::

    0 <pad>   padding (ignored by the loss, masked out of attention)
    1 <s>     start of the target: the decoder's first input
    2 </s>    end of the target: decoding stops when it is produced
    3 <unk>   any token the training data did not contain

Word level splits text into words and single punctuation marks, each carrying
the space that preceded it (the way SentencePiece marks spaces), so decoding is
lossless: ``"Va !"`` -> ``[" Va", " !"]`` and ``"l'homme"`` -> ``[" l", "'", "homme"]``.
Joining the tokens and removing the leading space gives the text back, with
French spacing before ``!`` or ``?`` intact, which BLEU and chrF then score
against the raw reference.

Used by ``seq2seq`` (source and target vocabularies) and ``caption`` (the
caption vocabulary); both save :meth:`Vocab.to_dict` in their config.json.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from typing import Any, Iterable, Literal, Sequence

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
UNK_TEXT = "<unk>"

Level = Literal["char", "word"]

# a word (letters, digits, underscore; any script) or one other non-space character,
# each optionally preceded by the single space that separated it from what came before
_WORD_RE = re.compile(r" ?(?:\w+|[^\w\s])")


def normalize(text: str) -> str:
    """NFC Unicode, whitespace runs (tabs, newlines, non-breaking spaces) collapsed to one space, stripped."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def tokenize(text: str, level: Level) -> list[str]:
    """Split normalized text into tokens (characters, or space-marked words and punctuation)."""
    text = normalize(text)
    if level == "char":
        return list(text)
    return _WORD_RE.findall(" " + text)


def detokenize(tokens: Sequence[str], level: Level) -> str:
    """Inverse of :func:`tokenize` (exact for normalized text)."""
    text = "".join(tokens)
    return text if level == "char" else text.removeprefix(" ")


class Vocab:
    """Token <-> id mapping (one side of a translation model, or the words of captions).

    Args:
        tokens: the ordinary tokens, in id order after the four specials.
        level: ``char`` or ``word``.
    """

    def __init__(self, tokens: Sequence[str], level: Level):
        if level not in ("char", "word"):
            raise ValueError(f"unknown level {level!r}")
        self.level: Level = level
        self.itos: list[str] = list(SPECIALS) + [t for t in tokens if t not in SPECIALS]
        self.stoi: dict[str, int] = {t: i for i, t in enumerate(self.itos)}

    @classmethod
    def build(cls, texts: Iterable[str], level: Level, min_freq: int = 1, max_size: int | None = None) -> "Vocab":
        """Collect the tokens of ``texts`` seen at least ``min_freq`` times (most frequent first, ties by text)."""
        counts: Counter[str] = Counter()
        for t in texts:
            counts.update(tokenize(t, level))
        kept = sorted((tok for tok, n in counts.items() if n >= min_freq), key=lambda tok: (-counts[tok], tok))
        if max_size is not None:
            kept = kept[: max(0, max_size - len(SPECIALS))]
        return cls(kept, level)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Token ids of ``text``; unknown tokens become ``<unk>`` (never an error)."""
        ids = [self.stoi.get(tok, UNK) for tok in tokenize(text, self.level)]
        return ([BOS] if bos else []) + ids + ([EOS] if eos else [])

    def decode(self, ids: Iterable[int], unk_text: str = UNK_TEXT) -> str:
        """Text of ``ids``: stops at ``</s>``, drops ``<pad>``/``<s>``, writes ``<unk>`` as ``unk_text``."""
        out: list[str] = []
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i in (PAD, BOS):
                continue
            if i == UNK or i >= len(self.itos):
                out.append(unk_text if self.level == "char" or not out else " " + unk_text)
            else:
                out.append(self.itos[i])
        return detokenize(out, self.level)

    def unknown_rate(self, texts: Iterable[str]) -> float:
        """Fraction of the tokens of ``texts`` that are not in the vocabulary."""
        total = unk = 0
        for t in texts:
            toks = tokenize(t, self.level)
            total += len(toks)
            unk += sum(tok not in self.stoi for tok in toks)
        return unk / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form stored in config.json (specials included, so ids are explicit)."""
        return {"level": self.level, "tokens": list(self.itos)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Vocab":
        tokens = list(d["tokens"])
        if tuple(tokens[: len(SPECIALS)]) != SPECIALS:
            raise ValueError("vocabulary does not start with the special tokens")
        return cls(tokens[len(SPECIALS):], d["level"])
