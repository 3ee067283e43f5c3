"""Seq2seq: character- and word-level encoder-decoder translation with greedy and beam decoding.

* :mod:`.vocab`: tokenisation and vocabularies (saved inside config.json);
* :mod:`.model`: encoder, attention (none / additive / dot), decoder;
* :mod:`.decode`: greedy and beam search;
* :mod:`.data`: the split by source sentence, length-bucketed batches;
* :mod:`.train`: ``Seq2seqConfig`` and :func:`fit` (Lightning);
* :mod:`.translator`: :class:`Translator` and :func:`evaluate` (BLEU, chrF, report).

:func:`build_model` rebuilds the untrained network from a model directory's
``config.json`` (found by ``core.modeldir`` by convention), so
``transferkit.load(DIR)`` works for translation models too.
"""

from __future__ import annotations

from typing import Any

from transferkit.core.lazy import lazy_exports

__all__ = ["build_model", "fit", "evaluate", "Translator", "Seq2seqConfig"]


def build_model(config: dict[str, Any]):
    """The :class:`~.model.Seq2Seq` network described by ``config.json`` (vocabulary sizes from its vocabularies)."""
    from transferkit.tasks.seq2seq.model import Seq2Seq

    try:
        net = dict(config["network"])
        n_src = len(config["vocab"]["source"]["tokens"])
        n_tgt = len(config["vocab"]["target"]["tokens"])
    except (KeyError, TypeError) as err:
        from transferkit.errors import TransferkitError

        raise TransferkitError(f"The seq2seq model config lacks {err}; it was not written by transferkit.") from None
    return Seq2Seq(n_src, n_tgt, **net)


__getattr__, __dir__ = lazy_exports(__name__, {"fit": "train", "Seq2seqConfig": "train", "evaluate": "translator",
                                                  "Translator": "translator"})
