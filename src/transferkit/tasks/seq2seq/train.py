"""Training: the run config, the LightningModule (teacher forcing), and ``fit``.

``fit`` reads ``source<TAB>target`` pairs, splits them (seeded, by source
sentence), builds both vocabularies from the training part, trains on
length-bucketed batches with the shared Lightning engine (checkpoints, early
stopping on validation chrF, a wall-clock budget), restores the best weights,
and saves a model directory that carries its vocabularies, so it translates by
itself.  It ends by evaluating the held-out pairs (``report.html``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from transferkit.core.config import doc, require
from transferkit.core.engine import TrainConfig
from transferkit.core.progress import say as _say
from transferkit.errors import TransferkitError

MODEL_SUBDIR = "model"
HELDOUT_FILE = "heldout.tsv"


@dataclass
class Seq2seqConfig(TrainConfig):
    """Options of ``transferkit seq2seq fit``; the defaults are the best configuration measured on
    the English-French pairs within a 30-minute CPU budget (see BENCHMARKS.md)."""

    level: Literal["char", "word"] = doc("tokens: characters, or words and punctuation marks", "word")
    cell: Literal["lstm", "gru"] = doc("recurrent cell of encoder and decoder", "lstm")
    hidden: int = doc("units per recurrent layer", 256)
    layers: int = doc("stacked recurrent layers (encoder and decoder)", 1)
    attention: Literal["none", "additive", "dot"] = doc("attention: none (Keras example), additive (Bahdanau), dot (Luong)", "dot")
    bidirectional: bool = doc("bidirectional encoder", True)
    embed: Optional[int] = doc("embedding size (None: 128 for characters, --hidden for words)", None)
    dropout: float = doc("dropout on embeddings, between layers and before the output layer", 0.3)
    max_pairs: Optional[int] = doc("use only the first N usable pairs of the file (None: all)", None)
    max_chars: int = doc("skip (and count) pairs with a side longer than this many characters", 300)
    min_freq: Optional[int] = doc("rarer tokens become <unk> (None: 1 for characters, 2 for words)", None)
    val_fraction: float = doc("share of source sentences held out for validation (seeded, by sentence)", 0.1)
    label_smoothing: float = doc("label smoothing of the training loss", 0.1)
    clip: float = doc("gradient norm clipping (0: off)", 1.0)
    beam: int = doc("beam size saved as the model's default for translate/eval (1: greedy)", 5)
    length_penalty: float = doc("GNMT length-penalty exponent used to rank finished beam hypotheses", 0.6)
    threads: Optional[int] = doc("CPU threads for PyTorch (None: PyTorch's default; 1 is far faster on a busy machine)", None)
    time_limit: Optional[float] = doc("wall-clock budget in minutes for the whole fit, final evaluation included (None: no limit)", 28.0)
    epochs: int = doc("maximum number of training epochs", 100)
    batch_size: int = doc("pairs per batch", 64)
    lr: float = doc("learning rate (Adam; halved when validation chrF stalls for 2 epochs)", 2e-3)
    patience: Optional[int] = doc("early stopping: epochs without a better validation chrF (None: off)", 8)

    def validate(self) -> None:
        require(self, ("hidden", "layers", "batch_size", "epochs", "beam", "max_chars"), lambda v: v >= 1, "be at least 1")
        require(self, "embed", lambda v: v >= 1, "be at least 1")
        require(self, "max_pairs", lambda v: v >= 2, "be at least 2")
        require(self, "dropout", lambda v: 0.0 <= v < 1.0, "be in [0, 1)")
        require(self, "val_fraction", lambda v: 0.0 < v < 1.0, "be between 0 and 1")
        require(self, "threads", lambda v: v >= 1, "be at least 1")
        require(self, "time_limit", lambda v: v > 0, "be a positive number of minutes")

    def embed_size(self) -> int:
        return self.embed if self.embed is not None else (128 if self.level == "char" else self.hidden)

    def min_count(self) -> int:
        return self.min_freq if self.min_freq is not None else (1 if self.level == "char" else 2)

    def network(self) -> dict[str, Any]:
        """Keyword arguments of :class:`~transferkit.tasks.seq2seq.model.Seq2Seq` (vocab sizes aside)."""
        return {
            "cell": self.cell, "hidden": self.hidden, "layers": self.layers, "attention": self.attention,
            "embed": self.embed_size(), "bidirectional": self.bidirectional, "dropout": self.dropout,
        }


def architecture_name(net: dict[str, Any]) -> str:
    bi = "bi" if net.get("bidirectional") else ""
    return f"seq2seq-{bi}{net['cell']}{net['hidden']}x{net['layers']}-{net['attention']}"


# --------------------------------------------------------------------------- Lightning module


def _module_class():
    import lightning.pytorch as pl
    import torch
    import torch.nn.functional as F

    from transferkit.tasks.seq2seq.decode import greedy
    from transferkit.tasks.seq2seq.vocab import PAD, UNK

    class Seq2seqModule(pl.LightningModule):
        """Teacher-forced training; validation reports loss, token accuracy and greedy-decoded chrF/BLEU."""

        def __init__(self, net: torch.nn.Module, cfg: Seq2seqConfig, tgt_vocab: Any, val_refs: list[str]):
            super().__init__()
            self.net = net
            self.cfg = cfg
            self.tgt_vocab = tgt_vocab
            self.val_refs = val_refs
            self._hyps: dict[int, str] = {}
            self._correct = 0
            self._total = 0

        def _loss(self, logits, target, smoothing: float):
            return F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=PAD,
                                   label_smoothing=smoothing)

        def training_step(self, batch, batch_idx):
            logits = self.net(batch["src"], batch["src_len"], batch["tgt_in"])
            loss = self._loss(logits, batch["tgt_out"], self.cfg.label_smoothing)
            self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=batch["src"].size(0), sync_dist=True)
            return loss

        def validation_step(self, batch, batch_idx):
            tgt = batch["tgt_out"]
            logits = self.net(batch["src"], batch["src_len"], batch["tgt_in"])
            self.log("val_loss", self._loss(logits, tgt, 0.0), on_step=False, on_epoch=True, batch_size=tgt.size(0), sync_dist=True)
            real = tgt != PAD
            # an <unk> target is never "right": the true token is one the model cannot produce
            self._correct += int(((logits.argmax(-1) == tgt) & real & (tgt != UNK)).sum())
            self._total += int(real.sum())
            dec = greedy(self.net, batch["src"], batch["src_len"], max_len=tgt.size(1) + 10)
            for i, ids in zip(batch["index"].tolist(), dec.tokens.tolist()):
                self._hyps[i] = self.tgt_vocab.decode(ids)

        def on_validation_epoch_end(self):
            import sacrebleu

            idx = sorted(self._hyps)
            hyps = [self._hyps[i] for i in idx]
            refs = [self.val_refs[i] for i in idx]
            if hyps:
                self.log("val_chrf", sacrebleu.corpus_chrf(hyps, [refs]).score, sync_dist=True)
                self.log("val_bleu", sacrebleu.corpus_bleu(hyps, [refs]).score, sync_dist=True)
                self.log("val_token_acc", self._correct / max(self._total, 1), sync_dist=True)
            self._hyps, self._correct, self._total = {}, 0, 0

        def configure_optimizers(self):
            opt = torch.optim.Adam(self.net.parameters(), lr=self.cfg.lr)
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=2)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val_chrf", "interval": "epoch"}}

    return Seq2seqModule


# --------------------------------------------------------------------------- fit


def fit(cfg: Seq2seqConfig, data: str | Path, run_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    """Train a translation model on ``data`` (``source<TAB>target`` lines) into ``run_dir``.

    ``run_dir`` receives ``config.yaml``, ``checkpoints/``, ``metrics.csv``,
    ``heldout.tsv`` (the validation pairs), ``model/`` (the model directory),
    ``eval.json`` and ``report.html``.

    Returns:
        The held-out evaluation (``bleu``, ``chrf``, ``exact``, ``token_acc``, ...)
        plus ``run_dir``, ``model_dir`` and ``fit_seconds``.
    """
    t0 = time.monotonic()
    from transferkit.core.datasets import read_pairs

    pairs = read_pairs(data, max_pairs=cfg.max_pairs, max_chars=cfg.max_chars)  # bad data fails before heavy imports
    import torch

    from transferkit.core import config as cfgmod
    from transferkit.core import engine
    from transferkit.core.limits import trainer_limits
    from transferkit.core.modeldir import atomic_write_text, save_model_dir
    from transferkit.tasks.seq2seq.data import BucketBatchSampler, PairDataset, collate, split_pairs
    from transferkit.tasks.seq2seq.translator import evaluate
    from transferkit.tasks.seq2seq.model import Seq2Seq
    from transferkit.tasks.seq2seq.vocab import Vocab, normalize

    note = pairs.summary()
    if note:
        _say(f"warning: {data}: {note}")
    if len(pairs.pairs) < 2:
        raise TransferkitError(f"{data} has fewer than two usable pairs; nothing to learn from.")
    run_dir = engine.prepare_run_dir(run_dir, resume)
    engine.seed_everything(cfg.seed)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    train_idx, val_idx = split_pairs(pairs.pairs, cfg.val_fraction, cfg.seed)
    train = [pairs.pairs[i] for i in train_idx]
    val = [pairs.pairs[i] for i in val_idx]
    src_vocab = Vocab.build((s for s, _ in train), cfg.level, cfg.min_count())
    tgt_vocab = Vocab.build((t for _, t in train), cfg.level, cfg.min_count())
    _say(
        f"{len(pairs.pairs)} pairs: {len(train)} for training, {len(val)} held out; {cfg.level} vocabularies: "
        f"{len(src_vocab)} source / {len(tgt_vocab)} target tokens (held-out unknown: "
        f"{src_vocab.unknown_rate(s for s, _ in val):.1%} / {tgt_vocab.unknown_rate(t for _, t in val):.1%})"
    )
    if engine.is_rank_zero():  # DDP: the other ranks build the same seeded split and vocabularies, and write nothing
        cfgmod.save(cfg, run_dir / "config.yaml")
        atomic_write_text(run_dir / HELDOUT_FILE, "".join(f"{s}\t{t}\n" for s, t in val))

    net_kw = cfg.network()
    net = Seq2Seq(len(src_vocab), len(tgt_vocab), **net_kw)
    n_params = sum(p.numel() for p in net.parameters())
    _say(f"model {architecture_name(net_kw)}: {n_params / 1e6:.2f} M parameters")
    train_ds, val_ds = PairDataset(train, src_vocab, tgt_vocab), PairDataset(val, src_vocab, tgt_vocab)
    train_loader = torch.utils.data.DataLoader(
        train_ds, batch_sampler=BucketBatchSampler(train_ds.lengths(), cfg.batch_size, shuffle=True, seed=cfg.seed),
        collate_fn=collate, num_workers=0,
    )
    val_loader = torch.utils.data.DataLoader(
        val_ds, batch_sampler=BucketBatchSampler(val_ds.lengths(), max(cfg.batch_size, 256), shuffle=False),
        collate_fn=collate, num_workers=0,
    )
    module = _module_class()(net, cfg, tgt_vocab, [normalize(t) for _, t in val])

    # reserve: restoring, saving and the final (beam) evaluation of the held-out pairs
    extra = trainer_limits(cfg.clip, cfg.time_limit, t0, reserve_s=45.0, flag="--time-limit")
    extra["use_distributed_sampler"] = False
    trainer = engine.make_trainer(cfg, run_dir, monitor="val_chrf", mode="max", **extra)
    engine.fit(trainer, module, train_loader, val_loader, run_dir=run_dir, resume=resume)
    if not engine.is_rank_zero():
        return {}  # DDP: the other ranks trained alongside; rank 0 evaluates and writes the results
    best_path = engine.restore_best(trainer, module)
    history = engine.metrics_by_epoch(run_dir)
    chrf_hist = history.get("val_chrf", [])
    best_epoch, best_chrf = max(chrf_hist, key=lambda p: p[1]) if chrf_hist else (None, None)
    max_tgt = max(len(t) for t in train_ds.tgt)

    model_config = {
        "task": "seq2seq",
        "architecture": architecture_name(net_kw),
        "network": net_kw,
        "level": cfg.level,
        "vocab": {"source": src_vocab.to_dict(), "target": tgt_vocab.to_dict()},
        "decoding": {"beam": cfg.beam, "length_penalty": cfg.length_penalty, "max_len": int(max_tgt * 1.5) + 10},
        "training": {
            "data": str(data), "pairs_train": len(train), "pairs_heldout": len(val), "skipped": pairs.skipped,
            "epochs_run": trainer.current_epoch, "best_epoch": None if best_epoch is None else best_epoch + 1,
            "best_val_chrf_greedy": best_chrf, "best_checkpoint": Path(best_path).name if best_path else None,
            "parameters": n_params, "seed": cfg.seed,
        },
    }
    model_dir = save_model_dir(net, model_config, run_dir / MODEL_SUBDIR)
    train_seconds = time.monotonic() - t0
    _say(f"trained {trainer.current_epoch} epochs in {train_seconds / 60:.1f} min (best epoch {model_config['training']['best_epoch']}); "
         f"saved {model_dir}; evaluating the held-out pairs ...")
    result = evaluate(run_dir, run_dir / HELDOUT_FILE, report=True)
    result.update({"run_dir": str(run_dir), "model_dir": str(model_dir), "fit_seconds": time.monotonic() - t0})
    return result
