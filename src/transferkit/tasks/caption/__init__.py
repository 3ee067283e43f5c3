"""Caption: image captioning with a pretrained CNN encoder and an LSTM/GRU decoder (Show and Tell, Show Attend and Tell).

* :mod:`.data`: captions readers (captions.txt CSV, COCO json, JSON lines), orphans, image-level split;
* :mod:`.features`: the image encoder and its features through ``core.featcache``;
* :mod:`.model`: encoder, soft attention, decoder (weight tying), the saved model;
* :mod:`.metrics`: BLEU-1..4 (sacrebleu), CIDEr-D, distinct captions;
* :mod:`.train`: ``CaptionConfig`` and :func:`fit` (Lightning);
* :mod:`.captioner`: :class:`Captioner`, :func:`predict`, :func:`evaluate` (report).

The vocabulary and greedy/beam decoding are shared with ``seq2seq`` through
``core.vocab`` and ``core.decoding``.  :func:`build_model` rebuilds the
untrained network from a model directory's ``config.json``.
"""

from __future__ import annotations

from typing import Any

from transferkit.core.lazy import lazy_exports

__all__ = ["build_model", "fit", "evaluate", "predict", "Captioner", "CaptionConfig"]


def build_model(config: dict[str, Any]):
    """The :class:`~.model.CaptionModel` described by ``config.json`` (untrained; weights are loaded afterwards)."""
    import timm

    from transferkit.tasks.caption.model import CaptionDecoder, CaptionModel, ImageEncoder

    try:
        enc = config["encoder"]
        backbone = timm.create_model(enc["architecture"], pretrained=False, num_classes=0)
        encoder = ImageEncoder(backbone, int(enc.get("grid", 7)))
        decoder = CaptionDecoder(len(config["vocab"]["tokens"]), encoder.num_features, **dict(config["network"]))
    except (KeyError, TypeError) as err:
        from transferkit.errors import TransferkitError

        raise TransferkitError(f"The caption model config lacks {err}; it was not written by transferkit.") from None
    return CaptionModel(encoder, decoder)


__getattr__, __dir__ = lazy_exports(__name__, {"fit": "train", "CaptionConfig": "train", "evaluate": "captioner",
                                                  "predict": "captioner", "Captioner": "captioner"})
