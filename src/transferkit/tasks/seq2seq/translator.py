"""Using a saved model: :class:`Translator` (text in, text out) and :func:`evaluate` (BLEU, chrF,
exact match, teacher-forced token accuracy, ``report.html``).

Everything needed is in the model directory: ``config.json`` holds the
network's shape, both vocabularies and the decoding defaults, and
``model.safetensors`` the weights; nothing else is read.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sys
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from transferkit.errors import TransferkitError


class Translator:
    """A loaded seq2seq model with its vocabularies and decoding defaults.

    >>> tr = Translator.load("runs/fr")             # a run directory or its model/ folder
    >>> tr.translate(["Go.", "I'm cold."], beam=5)  # [{"source", "translation", "score"}, ...]
    """

    def __init__(self, module: Any, config: dict[str, Any], device: str = "cpu"):
        import torch

        from transferkit.tasks.seq2seq.vocab import Vocab

        if config.get("task") != "seq2seq":
            raise TransferkitError(f"This is a {config.get('task')!r} model, not a seq2seq translation model.")
        self.config = config
        self.device = torch.device(device)
        self.net = module.to(self.device).eval()
        self.src_vocab = Vocab.from_dict(config["vocab"]["source"])
        self.tgt_vocab = Vocab.from_dict(config["vocab"]["target"])
        dec = config.get("decoding", {})
        self.beam = int(dec.get("beam", 1))
        self.length_penalty = float(dec.get("length_penalty", 0.0))
        self.max_len = int(dec.get("max_len", 200))

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto") -> "Translator":
        """Load a model directory (or a run directory holding ``model/``) safely (safetensors)."""
        from transferkit.core import modeldir

        if modeldir.find_model_dir(path) is None:
            raise TransferkitError(f"{path} is not a transferkit model directory (no config.json).")
        import torch

        tm = modeldir.load(path)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return cls(tm.module, tm.config, device)

    def _batches(self, texts: Sequence[str], batch_size: int) -> Iterable[tuple[list[int], Any, Any]]:
        """Sources sorted by length (little padding), in batches: (original indices, src ids, lengths)."""
        import torch

        from transferkit.tasks.seq2seq.data import pad_batch

        enc = [self.src_vocab.encode(t) or [0] for t in texts]
        order = sorted(range(len(texts)), key=lambda i: len(enc[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            src, src_len = pad_batch([torch.tensor(enc[i], dtype=torch.long) for i in idx])
            yield idx, src.to(self.device), src_len.to(self.device)

    def translate(self, texts: Sequence[str], beam: Optional[int] = None, max_len: Optional[int] = None,
                  batch_size: int = 64, progress: bool = False) -> list[dict[str, Any]]:
        """Translate ``texts``; returns one ``{"source", "translation", "score"}`` per input, in order.

        ``score`` is the total log-probability of the translation (tokens and
        </s>).  Unknown characters or words map to ``<unk>``; empty inputs give
        empty translations.

        Args:
            beam: hypotheses kept (1: greedy); default: the model's own.
            max_len: most output tokens; default: the model's own (1.5x the
                longest training target, plus 10).
        """
        from transferkit.core.progress import Progress
        from transferkit.tasks.seq2seq.decode import decode

        beam = self.beam if beam is None else int(beam)
        max_len = self.max_len if max_len is None else int(max_len)
        if beam < 1:
            raise TransferkitError("--beam must be at least 1.")
        if max_len < 1:
            raise TransferkitError("--max-len must be at least 1.")
        texts = [str(t) for t in texts]
        out: list[Optional[dict[str, Any]]] = [None] * len(texts)
        live = [i for i, t in enumerate(texts) if t.strip()]
        for i in set(range(len(texts))) - set(live):
            out[i] = {"source": texts[i], "translation": "", "score": 0.0}
        with Progress(len(live), "translate", unit="sent") if progress else contextlib.nullcontext() as bar:
            for idx, src, src_len in self._batches([texts[i] for i in live], batch_size):
                dec = decode(self.net, src, src_len, beam, max_len, self.length_penalty)
                for j, ids, score in zip(idx, dec.tokens.tolist(), dec.scores.tolist()):
                    i = live[j]
                    out[i] = {"source": texts[i], "translation": self.tgt_vocab.decode(ids), "score": float(score)}
                if bar is not None:
                    bar.update(len(idx))
        return out  # type: ignore[return-value]

    def attention(self, text: str, max_len: Optional[int] = None) -> tuple[list[str], list[str], Any] | None:
        """Greedy translation of one text with its attention weights: (source tokens, output tokens,
        weights (len(out), len(src)) numpy array), or None for a model without attention."""
        import torch

        from transferkit.tasks.seq2seq.decode import greedy
        from transferkit.tasks.seq2seq.vocab import EOS, tokenize

        if self.net.decoder.attn is None:
            return None
        ids = self.src_vocab.encode(text) or [0]
        src = torch.tensor([ids], dtype=torch.long, device=self.device)
        dec = greedy(self.net, src, torch.tensor([len(ids)]), max_len or self.max_len, keep_attention=True)
        out_ids = dec.tokens[0].tolist()
        n = out_ids.index(EOS) + 1 if EOS in out_ids else len(out_ids)
        out_tok = [self.tgt_vocab.itos[i] if i != EOS else "</s>" for i in out_ids[:n]]
        return tokenize(text, self.src_vocab.level), out_tok, dec.attention[0, :n].cpu().numpy()

    def token_accuracy(self, pairs: Sequence[tuple[str, str]], batch_size: int = 128) -> float:
        """Share of target tokens (</s> included, padding excluded; <unk> targets count as wrong) predicted right under teacher forcing."""
        import torch

        from transferkit.tasks.seq2seq.data import PairDataset, collate
        from transferkit.tasks.seq2seq.vocab import PAD, UNK

        ds = PairDataset(pairs, self.src_vocab, self.tgt_vocab)
        order = sorted(range(len(ds)), key=lambda i: ds.lengths()[i])
        correct = total = 0
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                b = collate([ds[i] for i in order[start : start + batch_size]])
                logits = self.net(b["src"].to(self.device), b["src_len"], b["tgt_in"].to(self.device))
                tgt = b["tgt_out"].to(self.device)
                real = tgt != PAD
                correct += int(((logits.argmax(-1) == tgt) & real & (tgt != UNK)).sum())  # <unk> never counts as right
                total += int(real.sum())
        return correct / max(total, 1)


def _run_dir_of(path: Path) -> Path:
    """The folder that gets report.html: the run directory (also when given its model/ folder), else the model directory."""
    if (path / "config.json").is_file() and (path.parent / "metrics.csv").is_file():
        return path.parent
    return path


def _sentence_chrf(hyp: str, ref: str) -> float:
    import sacrebleu

    return sacrebleu.sentence_chrf(hyp, [ref]).score


def attention_figure(items: list[tuple[list[str], list[str], Any]]):
    """Heat maps of attention weights (rows: output tokens, columns: source tokens)."""
    from transferkit.core.report import plt

    pyplot = plt()
    n = len(items)
    fig, axes = pyplot.subplots(1, n, figsize=(4.2 * n, 4.2), squeeze=False)
    for ax, (src, out, w) in zip(axes[0], items):
        ax.imshow(w[:, : len(src)], cmap="Greys", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(src)), [s.replace(" ", "␣") for s in src], rotation=90, fontsize=7)
        ax.set_yticks(range(len(out)), [s.replace(" ", "␣") for s in out], fontsize=7)
        ax.set_xlabel("source")
    axes[0][0].set_ylabel("output")
    fig.tight_layout()
    return fig


def evaluate(model: str | os.PathLike, data: str | os.PathLike, beam: Optional[int] = None, max_len: Optional[int] = None,
             max_pairs: Optional[int] = None, batch_size: int = 64, report: bool = True, samples: int = 30,
             translator: Optional[Translator] = None) -> dict[str, Any]:
    """Score a model on ``source<TAB>target`` pairs.

    Returns:
        ``{"bleu", "chrf", "exact", "token_acc", "pairs", "beam", "skipped"}``:
        corpus BLEU and chrF (sacrebleu, 0-100), the share of translations equal
        to their reference, and the teacher-forced token accuracy (0-1; the
        figure Keras's example reports, here without padding positions).
        With ``report``, ``report.html`` (curves, metrics, sample translations,
        attention maps) and ``eval.json`` are written to the run directory.
    """
    import sacrebleu

    from transferkit.core.datasets import read_pairs
    from transferkit.core.modeldir import atomic_write_text
    from transferkit.tasks.seq2seq.vocab import normalize

    path = Path(model)
    tr = translator or Translator.load(path)
    pairs = read_pairs(data, max_pairs=max_pairs)
    note = pairs.summary()
    if note:
        print(f"warning: {data}: {note}", file=sys.stderr)
    sources = [s for s, _ in pairs.pairs]
    refs = [normalize(t) for _, t in pairs.pairs]
    beam = tr.beam if beam is None else beam
    out = tr.translate(sources, beam=beam, max_len=max_len, batch_size=batch_size, progress=len(sources) > 500)
    hyps = [o["translation"] for o in out]
    result: dict[str, Any] = {
        "bleu": sacrebleu.corpus_bleu(hyps, [refs]).score,
        "chrf": sacrebleu.corpus_chrf(hyps, [refs]).score,
        "exact": sum(h == r for h, r in zip(hyps, refs)) / len(refs),
        "token_acc": tr.token_accuracy(pairs.pairs),
        "pairs": len(refs),
        "beam": beam,
        "skipped": {k: v for k, v in pairs.skipped.items() if v},
    }
    if report:
        _write_report(path, tr, result, pairs.pairs, hyps, data, samples)
        atomic_write_text(_run_dir_of(path) / "eval.json", json.dumps({**result, "data": str(data)}, indent=2))
    return result


def _write_report(path: Path, tr: Translator, result: dict[str, Any], pairs: Sequence[tuple[str, str]],
                  hyps: Sequence[str], data: Any, samples: int) -> Path:
    from transferkit.core.engine import metrics_by_epoch
    from transferkit.core.report import Report, plot_curves

    run_dir = _run_dir_of(path)
    rep = Report(run_dir, f"Seq2seq translation: {tr.config.get('architecture', '')} ({tr.config.get('level', '')} level)")
    rep.heading(f"Evaluation on {data}")
    rep.table(
        ["pairs", "beam", "BLEU", "chrF", "exact match", "token accuracy (teacher forcing)"],
        [[result["pairs"], result["beam"], result["bleu"], result["chrf"], result["exact"], result["token_acc"]]],
    )
    hist = metrics_by_epoch(run_dir)
    if hist:
        rep.heading("Training curves")
        rep.figure(plot_curves(hist, ["train_loss", "val_loss"], "Loss (train: label-smoothed)", "cross-entropy"), "curves_loss.png")
        rep.figure(plot_curves(hist, ["val_chrf", "val_bleu"], "Validation chrF and BLEU (greedy)", "score"), "curves_chrf.png")
        rep.figure(plot_curves(hist, ["val_token_acc"], "Validation token accuracy (teacher forcing)", "accuracy"), "curves_acc.png")
    rng = random.Random(0)
    pick = sorted(rng.sample(range(len(pairs)), min(samples, len(pairs))))
    rep.heading("Sample translations")
    rep.table(["source", "reference", "translation", "chrF"],
              [[pairs[i][0], pairs[i][1], hyps[i], _sentence_chrf(hyps[i], pairs[i][1])] for i in pick])
    if tr.net.decoder.attn is not None:
        maps = [m for m in (tr.attention(pairs[i][0]) for i in pick[:4]) if m is not None]
        if maps:
            rep.heading("Attention")
            rep.figure(attention_figure(maps), "attention.png", "Greedy decoding: where each output token looked (darker = more weight)")
    rep.config({k: v for k, v in tr.config.items() if k != "vocab"}, "Model")
    return rep.write()
