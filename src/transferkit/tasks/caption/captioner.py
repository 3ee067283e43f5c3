"""Using a saved model: :class:`Captioner` (images in, captions out), :func:`predict` (the serving contract)
and :func:`evaluate` (BLEU-1..4, CIDEr-D, distinct captions, ``report.html``).

Everything needed is in the model directory: ``config.json`` holds the
encoder's architecture and preprocessing, the decoder's shape, the vocabulary
and the decoding defaults; ``model.safetensors`` holds encoder and decoder
weights.  Nothing else is read.
"""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from transferkit.errors import TransferkitError


class Captioner:
    """A loaded captioning model.

    >>> cap = Captioner.load("runs/flickr")             # a run directory or its model/ folder
    >>> cap.caption(["dog.jpg"], beam=3)                 # [{"path", "caption", "score"}, ...]
    """

    def __init__(self, module: Any, config: dict[str, Any], device: str = "cpu"):
        import torch

        from transferkit.core.backbones import Preprocessing
        from transferkit.core.vocab import Vocab

        if config.get("task") != "caption":
            raise TransferkitError(f"This is a {config.get('task')!r} model, not an image captioning model.")
        self.config = config
        self.device = torch.device(device)
        self.model = module.to(self.device).eval()
        self.vocab = Vocab.from_dict(config["vocab"])
        self.preprocessing = Preprocessing.from_dict(config.get("preprocessing") or {})
        dec = config.get("decoding", {})
        self.beam = int(dec.get("beam", 1))
        self.length_penalty = float(dec.get("length_penalty", 0.0))
        self.max_len = int(dec.get("max_len", 22))

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto") -> "Captioner":
        """Load a model directory (or a run directory holding ``model/``) safely (safetensors)."""
        from transferkit.core import modeldir

        if modeldir.find_model_dir(path) is None:
            raise TransferkitError(f"{path} is not a transferkit model directory (no config.json).")
        import torch

        tm = modeldir.load(path)
        if tm.task != "caption":
            raise TransferkitError(f"{path} holds a {tm.task!r} model, not an image captioning model.")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return cls(tm.module, tm.config, device)

    @property
    def has_attention(self) -> bool:
        return self.model.decoder.attention == "soft"

    def features(self, items: Sequence[Any], batch_size: int = 32, skips: Any = None, cache: bool = False):
        """Yield (indices into ``items``, decoder input features) for the readable images.

        ``cache``: image files go through the feature cache (``core.featcache``), so scoring the same
        images again (another beam size) skips the encoder; in-memory images are always computed.
        """
        import torch

        from transferkit.core.inference import iter_batches

        if cache and items and all(not isinstance(it, tuple) for it in items):
            from transferkit.tasks.caption.features import cached_features

            enc = self.config["encoder"]
            res = cached_features(items, self.model.encoder, enc["architecture"], self.preprocessing, self.model.layer,
                                  device=str(self.device), skips=skips)
            feats = torch.from_numpy(res.features)
            for start in range(0, len(res.ok), batch_size):
                yield res.ok[start : start + batch_size], feats[start : start + batch_size].to(self.device)
            return

        tf = self.preprocessing.transform()
        workers = 0 if len(items) < 4 * batch_size else None
        for idx, batch in iter_batches(list(items), tf, batch_size, workers, skips):
            with torch.inference_mode():
                yield idx, self.model.features(batch.to(self.device))

    def caption(self, items: Sequence[Any], beam: Optional[int] = None, n: int = 1, batch_size: int = 32,
                max_len: Optional[int] = None, cache: bool = False) -> list[dict[str, Any]]:
        """One dict per image (a path, or ``(name, PIL image)``), in order.

        ``{"path", "caption", "score"}``: ``score`` is the caption's total
        log-probability (words and </s>).  With ``n`` > 1 (beam search keeps at
        least ``n``), also ``"captions"``: the ``n`` best ``{"caption", "score"}``.
        An unreadable image gives ``{"path", "caption": None, "error"}``.
        """
        from transferkit.core.decoding import decode
        from transferkit.core.images import SkipLog

        beam = self.beam if beam is None else int(beam)
        if beam < 1:
            raise TransferkitError("--beam must be at least 1.")
        if n < 1:
            raise TransferkitError("--n must be at least 1.")
        beam = max(beam, n)
        max_len = self.max_len if max_len is None else int(max_len)
        names = [it[0] if isinstance(it, tuple) else os.fspath(it) for it in items]
        out: list[Optional[dict[str, Any]]] = [None] * len(items)
        skips = SkipLog()
        for idx, feats in self.features(items, batch_size, skips, cache):
            dec = decode(self.model.decoder, (feats,), beam, max_len, self.length_penalty, n_best=n)
            for r, i in enumerate(idx):
                row = {"path": names[i], "caption": self.vocab.decode(dec.tokens[r].tolist()), "score": float(dec.scores[r])}
                if n > 1 and dec.nbest_tokens is not None:
                    row["captions"] = [{"caption": self.vocab.decode(t.tolist()), "score": float(s)}
                                       for t, s in zip(dec.nbest_tokens[r], dec.nbest_scores[r])]
                out[i] = row
        errors = {err.path: err.reason for err in skips.skipped}
        for i, row in enumerate(out):
            if row is None:
                out[i] = {"path": names[i], "caption": None, "error": errors.get(names[i], "could not be read")}
        return out  # type: ignore[return-value]

    def attention(self, item: Any) -> tuple[list[str], Any] | None:
        """Greedy caption of one image with its attention: (words, weights (len(words), G, G) numpy), or None
        for a model without attention or an unreadable image."""
        import torch

        from transferkit.core.decoding import greedy
        from transferkit.core.vocab import EOS

        if not self.has_attention:
            return None
        for _, feats in self.features([item], 1):
            dec = greedy(self.model.decoder, (feats,), self.max_len, keep_attention=True)
            ids = dec.tokens[0].tolist()
            n = ids.index(EOS) + 1 if EOS in ids else len(ids)
            words = [self.vocab.itos[i].strip() if i != EOS else "</s>" for i in ids[:n]]
            g = int(self.config["encoder"]["grid"])
            return words, dec.attention[0, :n].reshape(n, g, g).float().cpu().numpy()
        return None


def predict(model: Any, inputs: Sequence[Any], beam: Optional[int] = None, n: int = 1, **opts: Any) -> list[dict[str, Any]]:
    """The serving contract: captions for ``inputs`` (paths or ``(name, PIL image)``) from a model
    directory, run directory, loaded :class:`~transferkit.core.modeldir.TransferModel` (what
    ``transferkit serve`` passes) or :class:`Captioner`; ``[{"path", "caption", "score"}, ...]``."""
    if isinstance(model, Captioner):
        cap = model
    elif hasattr(model, "module") and hasattr(model, "config"):
        cap = Captioner(model.module, model.config, "cpu")
    else:
        cap = Captioner.load(model)
    return cap.caption(list(inputs), beam=beam, n=n, **opts)


# --------------------------------------------------------------------------- evaluation


def _run_dir_of(path: Path) -> Path:
    """The folder that gets report.html: the run directory (also when given its model/ folder), else the model directory."""
    if (path / "config.json").is_file() and (path.parent / "metrics.csv").is_file():
        return path.parent
    return path


def evaluate(model: str | os.PathLike, data: str | os.PathLike, beam: Optional[int] = None, batch_size: int = 32,
             report: bool = True, samples: int = 12, captioner: Optional[Captioner] = None,
             cache: bool = True) -> dict[str, Any]:
    """Caption every image of ``data`` and score against all its references.

    ``cache``: encoder features through the feature cache (a second evaluation of the same images
    runs the decoder only; ``captions_per_second`` then measures decoding alone).

    Returns:
        ``{"bleu1", "bleu2", "bleu3", "bleu4", "cider", "unique_ratio", "n_images", "beam",
        "captions_per_second"}``: corpus BLEU (0-100), CIDEr-D, distinct captions / images.
        With ``report``, ``report.html`` and ``eval.json`` are written to the run directory.
    """
    import time

    from transferkit.core.modeldir import atomic_write_text
    from transferkit.tasks.caption.data import clean_caption, read_captions
    from transferkit.tasks.caption.metrics import score_all

    path = Path(model)
    cap = captioner or Captioner.load(path)
    data_set = read_captions(data)
    note = data_set.summary()
    if note:
        print(f"warning: {data}: {note}", file=sys.stderr)
    beam = cap.beam if beam is None else int(beam)
    t0 = time.perf_counter()
    rows = cap.caption(data_set.images, beam=beam, batch_size=batch_size, cache=cache)
    seconds = time.perf_counter() - t0
    ok = [i for i, r in enumerate(rows) if r["caption"] is not None]
    if not ok:
        raise TransferkitError(f"None of the images of {data} could be read.")
    hyps = [rows[i]["caption"] for i in ok]
    refs = [[clean_caption(c) for c in data_set.captions[i]] for i in ok]
    result: dict[str, Any] = score_all(hyps, refs)
    result.update({"beam": beam, "captions_per_second": len(ok) / max(seconds, 1e-9)})
    if report:
        _write_report(path, cap, result, [data_set.images[i] for i in ok], hyps, refs, data, samples)
        atomic_write_text(_run_dir_of(path) / "eval.json", json.dumps({**result, "data": str(data)}, indent=2))
    return result


def _thumb(path: Any, size: int = 224):
    import numpy as np

    from transferkit.core.images import read_image

    return np.asarray(read_image(path).convert("RGB").resize((size, size)))


def captions_figure(images: Sequence[Any], hyps: Sequence[str], refs: Sequence[Sequence[str]], ncols: int = 3):
    """Images with the generated caption (bold) above two of their references."""
    import textwrap

    from transferkit.core.report import plt

    pyplot = plt()
    n = len(images)
    nrows = (n + ncols - 1) // ncols
    fig, axes = pyplot.subplots(nrows, ncols, figsize=(4.2 * ncols, 4.6 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, h, rs in zip(axes.flat, images, hyps, refs):
        ax.imshow(_thumb(img))
        ref_text = "\n".join(textwrap.fill("ref: " + r, 48) for r in rs[:2])
        ax.set_title(textwrap.fill(h or "(empty)", 44), fontsize=9, fontweight="bold")
        ax.text(0.0, -0.04, ref_text, transform=ax.transAxes, fontsize=7, va="top", color="#444")
    fig.tight_layout()
    return fig


def attention_figure(image: Any, words: Sequence[str], weights: Any, ncols: int = 6):
    """The image, then one panel per generated word with its attention map over the image (brighter = more)."""
    import numpy as np
    from PIL import Image

    from transferkit.core.report import plt

    pyplot = plt()
    thumb = _thumb(image)
    n = len(words) + 1
    nrows = (n + ncols - 1) // ncols
    fig, axes = pyplot.subplots(nrows, ncols, figsize=(2.0 * ncols, 2.1 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(thumb)
    axes.flat[0].set_title("image", fontsize=8)
    for ax, w, a in zip(list(axes.flat)[1:], words, weights):
        a = np.asarray(a, dtype=np.float32)
        a = a / max(float(a.max()), 1e-9)
        up = np.asarray(Image.fromarray((a * 255).astype(np.uint8)).resize(thumb.shape[:2][::-1], Image.BILINEAR)) / 255.0
        ax.imshow(thumb)
        ax.imshow(up, cmap="gray", alpha=0.6, vmin=0, vmax=1)
        ax.set_title(w, fontsize=8)
    fig.tight_layout()
    return fig


def _write_report(path: Path, cap: Captioner, result: dict[str, Any], images: Sequence[Any], hyps: Sequence[str],
                  refs: Sequence[Sequence[str]], data: Any, samples: int) -> Path:
    from transferkit.core.engine import metrics_by_epoch
    from transferkit.core.report import Report, plot_curves
    from transferkit.tasks.caption.metrics import cider_d_per_image

    run_dir = _run_dir_of(path)
    rep = Report(run_dir, f"Image captioning: {cap.config.get('architecture', '')}")
    rep.heading(f"Evaluation on {data}")
    rep.table(
        ["images", "beam", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr-D", "distinct captions", "captions/s"],
        [[result["n_images"], result["beam"], result["bleu1"], result["bleu2"], result["bleu3"], result["bleu4"],
          result["cider"], result["unique_ratio"], result["captions_per_second"]]],
    )
    hist = metrics_by_epoch(run_dir)
    if hist:
        rep.heading("Training curves")
        rep.figure(plot_curves(hist, ["train_loss", "val_loss"], "Loss", "cross-entropy"), "curves_loss.png")
        rep.figure(plot_curves(hist, ["val_bleu4"], "Validation BLEU-4 (greedy)", "BLEU-4"), "curves_bleu4.png")
        rep.figure(plot_curves(hist, ["val_cider"], "Validation CIDEr-D (greedy)", "CIDEr-D"), "curves_cider.png")
    rng = random.Random(0)
    pick = sorted(rng.sample(range(len(images)), min(samples, len(images))))
    rep.heading("Validation images: generated caption (bold) and references")
    rep.figure(captions_figure([images[i] for i in pick], [hyps[i] for i in pick], [refs[i] for i in pick]),
               "captions.png")
    per_image = cider_d_per_image(hyps, refs)
    rep.table(["image", "generated", "references", "CIDEr-D"],
              [[Path(images[i]).name, hyps[i], " | ".join(refs[i]), per_image[i]] for i in pick])
    if cap.has_attention:
        rep.heading("Soft attention: where each word looked")
        for k, i in enumerate(pick[:3]):
            att = cap.attention(images[i])
            if att is not None:
                rep.figure(attention_figure(images[i], *att), f"attention_{k}.png", f"{Path(images[i]).name}: greedy caption")
    rep.config({k: v for k, v in cap.config.items() if k != "vocab"}, "Model")
    return rep.write()
