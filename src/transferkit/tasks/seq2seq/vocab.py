"""Vocabularies for translation: they live in :mod:`transferkit.core.vocab` (shared with ``caption``); re-exported here."""

from transferkit.core.vocab import (  # noqa: F401
    BOS, EOS, PAD, SPECIALS, UNK, UNK_TEXT, Level, Vocab, detokenize, normalize, tokenize,
)
