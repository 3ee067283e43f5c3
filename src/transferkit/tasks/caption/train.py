"""Training: the run config, the LightningModule (teacher forcing), and ``fit``.

``fit`` reads the captioned images, splits them by image (seeded), builds the
vocabulary from the training captions, computes the encoder's features once
through the feature cache (unless the top of the encoder is fine-tuned, which
needs the images at every step), trains the decoder with the shared Lightning
engine (checkpoints, early stopping on validation loss, a wall-clock budget),
restores the best weights, and saves a model directory holding encoder,
decoder and vocabulary.  It ends by scoring the held-out images (``eval.json``,
``report.html``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from transferkit.core.config import doc, require
from transferkit.core.engine import TrainConfig
from transferkit.core.progress import say as _say
from transferkit.errors import TransferkitError

MODEL_SUBDIR = "model"
HELDOUT_FILE = "heldout.jsonl"


@dataclass
class CaptionConfig(TrainConfig):
    """Options of ``transferkit caption fit``."""

    encoder: str = doc("pretrained CNN (timm name or registered weights) whose features describe the image", "efficientnet_lite0")
    weights: str = doc("encoder weights: pretrained (offline resolution), none (random init, tests), or a weights file", "pretrained")
    image_size: Optional[int] = doc("encoder input size in pixels (None: the weights' own, e.g. 224)", None)
    decoder: Literal["lstm", "gru"] = doc("recurrent cell of the decoder", "lstm")
    attention: Literal["none", "soft"] = doc("none: Show and Tell (pooled vector as first input); soft: Show, Attend and Tell over a G x G map", "none")
    grid: int = doc("soft attention: the feature map is averaged to GRID x GRID positions", 7)
    embed: int = doc("word (and image) embedding size E", 256)
    hidden: int = doc("RNN units H", 512)
    tie_weights: bool = doc("share the word-embedding matrix with the output layer (V*E fewer parameters)", False)
    dropout: float = doc("dropout on embeddings and before the output layer", 0.5)
    min_count: int = doc("words seen fewer times in the training captions become <unk> (never generated)", 5)
    max_words: int = doc("training captions are cut to this many words; decoding stops after it too (+2)", 20)
    val_fraction: float = doc("share of images held out for validation and the final evaluation (seeded)", 0.1)
    max_images: Optional[int] = doc("use only N images (seeded sample; None: all)", None)
    finetune_encoder: int = doc("also train the top N stages of the encoder (0: frozen, features cached once)", 0)
    encoder_lr_decay: float = doc("fine-tuning: learning rate multiplied by this per stage below the decoder", 0.1)
    attention_reg: float = doc("soft attention: doubly stochastic penalty (each position attended ~once over the caption)", 1.0)
    label_smoothing: float = doc("label smoothing of the training loss", 0.0)
    clip: float = doc("gradient norm clipping (0: off)", 5.0)
    beam: int = doc("beam size saved as the model's default for predict/eval (1: greedy)", 3)
    length_penalty: float = doc("length normalisation exponent alpha of beam search (GNMT ((5+len)/6)^alpha)", 0.7)
    val_images: int = doc("validation images decoded (greedy) per epoch for BLEU-4/CIDEr curves", 300)
    feature_cache: bool = doc("cache encoder features on disk ($TRANSFERKIT_CACHE/features)", True)
    threads: Optional[int] = doc("CPU threads for PyTorch (None: PyTorch's default)", None)
    time_budget: Optional[float] = doc("wall-clock budget in minutes for the whole fit, features and evaluation included (None: none)", 28.0)
    epochs: int = doc("maximum number of training epochs", 30)
    batch_size: int = doc("captions per batch", 64)
    lr: float = doc("learning rate (Adam; halved when validation loss stalls)", 2e-3)
    patience: Optional[int] = doc("early stopping: epochs without a lower validation loss (None: off)", 4)

    def validate(self) -> None:
        at_least_1 = ("embed", "hidden", "batch_size", "epochs", "beam", "min_count", "max_words", "grid", "val_images")
        require(self, at_least_1, lambda v: v >= 1, "be at least 1")
        require(self, "finetune_encoder", lambda v: v >= 0, "be 0 or more stages")
        require(self, "dropout", lambda v: 0.0 <= v < 1.0, "be in [0, 1)")
        require(self, "val_fraction", lambda v: 0.0 < v < 1.0, "be between 0 and 1")
        require(self, "max_images", lambda v: v >= 2, "be at least 2")
        require(self, "time_budget", lambda v: v > 0, "be a positive number of minutes")
        require(self, "threads", lambda v: v >= 1, "be at least 1")

    def network(self) -> dict[str, Any]:
        """Keyword arguments of :class:`~transferkit.tasks.caption.model.CaptionDecoder` (sizes aside)."""
        return {"cell": self.decoder, "attention": self.attention, "embed": self.embed, "hidden": self.hidden,
                "tie_weights": self.tie_weights, "dropout": self.dropout}


def architecture_name(encoder: str, net: dict[str, Any]) -> str:
    tied = "-tied" if net.get("tie_weights") else ""
    return f"caption-{encoder}-{net['cell']}{net['hidden']}-{net['attention']}{tied}"


# --------------------------------------------------------------------------- data


class CaptionPairs:
    """(image, caption ids) pairs; the image is an index into a feature table, or a file read per step."""

    def __init__(self, img_idx: list[int], ids: list[list[int]], paths: Optional[list[Any]] = None, transform: Any = None):
        self.img_idx, self.ids, self.paths, self.transform = img_idx, ids, paths, transform

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        j = self.img_idx[i]
        if self.paths is None:
            return j, self.ids[i]
        from transferkit.core.images import read_image

        return self.transform(read_image(self.paths[j])), self.ids[i]


def collate(batch):
    """-> {"x": image indices (B,) or images (B, 3, H, W), "tgt_in": <s> w1..wn (B, T), "tgt_out": w1..wn </s> (B, T)}."""
    import torch

    from transferkit.core.vocab import BOS, EOS, PAD

    xs, ids = zip(*batch)
    T = max(len(s) for s in ids) + 1
    tgt_in = torch.full((len(ids), T), PAD, dtype=torch.long)
    tgt_out = torch.full((len(ids), T), PAD, dtype=torch.long)
    for r, s in enumerate(ids):
        tgt_in[r, : len(s) + 1] = torch.tensor([BOS, *s])
        tgt_out[r, : len(s) + 1] = torch.tensor([*s, EOS])
    x = torch.stack(xs) if isinstance(xs[0], torch.Tensor) else torch.tensor(xs, dtype=torch.long)
    return {"x": x, "tgt_in": tgt_in, "tgt_out": tgt_out}


def encode_captions(vocab: Any, captions: list[str], max_words: int) -> list[list[int]]:
    """Token ids of cleaned captions, cut to ``max_words``."""
    return [vocab.encode(c)[:max_words] for c in captions]


# --------------------------------------------------------------------------- Lightning module


def _module_class():
    import lightning.pytorch as pl
    import torch
    import torch.nn.functional as F

    from transferkit.core.decoding import greedy
    from transferkit.core.freezing import keep_frozen_bn_eval
    from transferkit.core.vocab import PAD
    from transferkit.tasks.caption.metrics import bleu, cider_d

    class CaptionModule(pl.LightningModule):
        """Teacher-forced training; validation: loss, and greedy captions of some images scored by BLEU-4 and CIDEr-D."""

        def __init__(self, model: torch.nn.Module, cfg: CaptionConfig, vocab: Any, train_feats: Any, val_feats: Any,
                     val_refs: list[list[str]], val_x: Any = None):
            super().__init__()
            self.model = model
            self.cfg = cfg
            self.vocab = vocab
            # feature tables (frozen encoder) live outside the state dict: checkpoints hold weights only
            self._feats = {"train": train_feats, "val": val_feats}
            self.val_refs = val_refs
            self.val_x = val_x  # fine-tuning: preprocessed validation images for the BLEU curve
            self._stage = "train"

        @property
        def finetune(self) -> bool:
            return self.cfg.finetune_encoder > 0

        def _features(self, x, split: str):
            if self.finetune:
                return self.model.features(x)
            return self._feats[split][x.cpu()].to(self.device)

        def _loss(self, batch, split: str):
            feats = self._features(batch["x"], split)
            logits, alphas = self.model.decoder(feats, batch["tgt_in"], return_attention=True)
            tgt = batch["tgt_out"]
            smoothing = self.cfg.label_smoothing if split == "train" else 0.0
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt.reshape(-1), ignore_index=PAD,
                                   label_smoothing=smoothing)
            if alphas is not None and self.cfg.attention_reg > 0 and split == "train":
                real = (tgt != PAD).float().unsqueeze(-1)  # (B, T, 1)
                loss = loss + self.cfg.attention_reg * ((1.0 - (alphas * real).sum(1)) ** 2).mean()
            return loss

        def training_step(self, batch, batch_idx):
            loss = self._loss(batch, "train")
            self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=batch["tgt_in"].size(0), sync_dist=True)
            return loss

        def on_train_epoch_start(self):
            keep_frozen_bn_eval(self.model.encoder)

        def validation_step(self, batch, batch_idx):
            loss = self._loss(batch, "val")
            self.log("val_loss", loss, on_step=False, on_epoch=True, batch_size=batch["tgt_in"].size(0), sync_dist=True)

        def on_validation_epoch_end(self):
            from transferkit.tasks.caption.data import clean_caption

            n = min(len(self.val_refs), self.cfg.val_images)
            if n == 0:
                return
            hyps = []
            for start in range(0, n, 128):
                idx = torch.arange(start, min(n, start + 128))
                if self.finetune:
                    feats = self.model.features(self.val_x[idx].to(self.device))
                else:
                    feats = self._feats["val"][idx].to(self.device)
                dec = greedy(self.model.decoder, (feats,), self.cfg.max_words + 2)
                hyps += [self.vocab.decode(ids) for ids in dec.tokens.tolist()]
            refs = [[clean_caption(r) for r in rs] for rs in self.val_refs[:n]]
            self.log("val_bleu4", bleu(hyps, refs)["bleu4"], sync_dist=True)
            self.log("val_cider", cider_d(hyps, refs), sync_dist=True)
            self.log("val_unique", len(set(hyps)) / len(hyps), sync_dist=True)

        def configure_optimizers(self):
            if self.finetune:
                from transferkit.core.freezing import layer_lr_groups

                groups = layer_lr_groups(self.model.encoder.backbone, self.model.decoder, self.cfg.lr,
                                         layer_decay=self.cfg.encoder_lr_decay, head_name="decoder")
                groups = [g for g in groups if any(p.requires_grad for p in g["params"])]
                opt = torch.optim.Adam(groups)
            else:
                opt = torch.optim.Adam(self.model.decoder.parameters(), lr=self.cfg.lr)
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=1)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val_loss", "interval": "epoch"}}

    return CaptionModule


# --------------------------------------------------------------------------- fit


def fit(cfg: CaptionConfig, data: str | Path, run_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    """Train a captioning model on ``data`` (see :mod:`.data` for the formats) into ``run_dir``.

    ``run_dir`` receives ``config.yaml``, ``checkpoints/``, ``metrics.csv``,
    ``heldout.jsonl`` (the validation images and their captions), ``model/``
    (the model directory), ``eval.json`` and ``report.html``.

    Returns:
        The held-out evaluation (``bleu1..4``, ``cider``, ``unique_ratio``,
        ``n_images``, ...) plus ``run_dir``, ``model_dir`` and ``fit_seconds``.
    """
    t0 = time.monotonic()
    from transferkit.tasks.caption.data import clean_caption, read_captions, split_images

    captions = read_captions(data)  # bad data fails before heavy imports
    note = captions.summary()
    if note:
        _say(f"warning: {data}: {note}")
    import random

    import numpy as np
    import torch

    from transferkit.core import config as cfgmod
    from transferkit.core import engine
    from transferkit.core.freezing import freeze_bottom
    from transferkit.core.images import SkipLog
    from transferkit.core.limits import trainer_limits
    from transferkit.core.modeldir import atomic_write_text, save_model_dir
    from transferkit.core.vocab import Vocab
    from transferkit.tasks.caption.captioner import evaluate
    from transferkit.tasks.caption.features import cached_features, create_image_encoder
    from transferkit.tasks.caption.model import CaptionDecoder, CaptionModel, count_parameters

    if cfg.max_images is not None and cfg.max_images < len(captions):
        keep = sorted(random.Random(cfg.seed).sample(range(len(captions)), cfg.max_images))
        captions = captions.subset(keep)
    run_dir = engine.prepare_run_dir(run_dir, resume)
    engine.seed_everything(cfg.seed)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    encoder, pre, arch = create_image_encoder(cfg.encoder, cfg.weights, cfg.image_size, cfg.grid)
    layer = "grid" if cfg.attention == "soft" else "pooled"

    train_i, val_i = split_images(len(captions), cfg.val_fraction, cfg.seed)
    train, val = captions.subset(train_i), captions.subset(val_i)
    vocab = Vocab.build((clean_caption(c) for caps in train.captions for c in caps), "word", cfg.min_count)
    val_texts = [clean_caption(c) for caps in val.captions for c in caps]
    _say(f"{len(captions)} images ({sum(map(len, captions.captions))} captions): {len(train)} for training, "
         f"{len(val)} held out; vocabulary {len(vocab)} words (min count {cfg.min_count}; held-out unknown "
         f"{vocab.unknown_rate(val_texts):.1%})")
    if len(vocab) <= 4:
        raise TransferkitError(f"No word occurs {cfg.min_count} times in the training captions; lower --min-count.")
    if engine.is_rank_zero():  # DDP: the other ranks build the same seeded split and vocabulary, and write nothing
        cfgmod.save(cfg, run_dir / "config.yaml")
        atomic_write_text(run_dir / HELDOUT_FILE, "".join(json.dumps({"image": str(p), "captions": caps}, ensure_ascii=False)
                                                          + "\n" for p, caps in zip(val.images, val.captions)))

    # ---- encoder features (cached) or images (fine-tuning)
    skips = SkipLog()
    finetune = cfg.finetune_encoder > 0
    if finetune:
        freeze_bottom(encoder.backbone, -cfg.finetune_encoder)
        train_feats = val_feats = None
        tf = pre.transform()
        val_x = torch.stack([tf(_read(p)) for p in val.images[: cfg.val_images]])
        feat_dim = encoder.num_features
        tr_ok, va_ok = list(range(len(train))), list(range(len(val)))
    else:
        device = "cpu" if cfg.device == "cpu" else "auto"
        res = cached_features(list(train.images) + list(val.images), encoder, arch, pre, layer, cfg.feature_cache,
                              device, skips)
        _say(f"encoder features: {res.hits} from the cache, {res.misses} computed ({res.seconds:.0f} s)")
        n_tr = len(train)
        rows = dict(zip(res.ok, res.features))
        tr_ok = [i for i in range(n_tr) if i in rows]
        va_ok = [i for i in range(len(val)) if n_tr + i in rows]
        if not tr_ok or not va_ok:
            raise TransferkitError("Too few readable images for a training and a validation part.")
        train_feats = torch.from_numpy(np.stack([rows[i] for i in tr_ok]))
        val_feats = torch.from_numpy(np.stack([rows[n_tr + i] for i in va_ok]))
        feat_dim = train_feats.shape[1]
        val_x = None
    if skips.skipped:
        _say(f"warning: {skips.summary()}")
    train, val = train.subset(tr_ok), val.subset(va_ok)

    img_idx, ids = [], []
    for j, caps in enumerate(train.captions):
        for c in encode_captions(vocab, [clean_caption(c) for c in caps], cfg.max_words):
            img_idx.append(j)
            ids.append(c)
    v_idx, v_ids = [], []
    for j, caps in enumerate(val.captions):
        for c in encode_captions(vocab, [clean_caption(c) for c in caps], cfg.max_words):
            v_idx.append(j)
            v_ids.append(c)
    tf = pre.transform() if finetune else None
    train_ds = CaptionPairs(img_idx, ids, list(train.images) if finetune else None, tf)
    val_ds = CaptionPairs(v_idx, v_ids, list(val.images) if finetune else None, tf)
    workers = (cfg.workers if cfg.workers is not None else 2) if finetune else 0
    train_loader = engine.make_loader(train_ds, cfg.batch_size, shuffle=True, workers=workers, seed=cfg.seed, collate_fn=collate)
    val_loader = engine.make_loader(val_ds, max(cfg.batch_size, 256), shuffle=False, workers=workers, collate_fn=collate)

    net_kw = cfg.network()
    decoder = CaptionDecoder(len(vocab), feat_dim, **net_kw)
    if finetune:  # statistics of the starting encoder's features on (up to) 256 training images
        with torch.no_grad():
            sample = torch.stack([tf(_read(p)) for p in train.images[:256]])
            decoder.feat_norm.set_stats(torch.cat([encoder.embed(sample[i : i + 32], layer) for i in range(0, len(sample), 32)]))
    else:
        decoder.feat_norm.set_stats(train_feats)
    model = CaptionModel(encoder, decoder)
    if not finetune:
        for p in encoder.parameters():
            p.requires_grad_(False)
    n_dec = count_parameters(decoder)
    _say(f"model {architecture_name(arch, net_kw)}: decoder {n_dec / 1e6:.2f} M parameters, encoder "
         f"{count_parameters(encoder) / 1e6:.2f} M ({'top ' + str(cfg.finetune_encoder) + ' stages trained' if finetune else 'frozen'})")
    module = _module_class()(model, cfg, vocab, train_feats, val_feats, val.captions[: cfg.val_images], val_x)

    # reserve: restoring, saving, the final beam evaluation and the report
    extra = trainer_limits(cfg.clip, cfg.time_budget, t0, reserve_s=30.0, flag="--time-budget")
    trainer = engine.make_trainer(cfg, run_dir, monitor="val_loss", mode="min", **extra)
    engine.fit(trainer, module, train_loader, val_loader, run_dir=run_dir, resume=resume)
    if not engine.is_rank_zero():
        return {}  # DDP: the other ranks trained alongside; rank 0 evaluates and writes the results
    best_path = engine.restore_best(trainer, module)
    history = engine.metrics_by_epoch(run_dir)
    loss_hist = history.get("val_loss", [])
    best_epoch = min(loss_hist, key=lambda p: p[1])[0] + 1 if loss_hist else None

    model_config = {
        "task": "caption",
        "architecture": architecture_name(arch, net_kw),
        "encoder": {"architecture": arch, "grid": cfg.grid, "layer": layer, "name": cfg.encoder},
        "preprocessing": pre.to_dict(),
        "network": net_kw,
        "vocab": vocab.to_dict(),
        "decoding": {"beam": cfg.beam, "length_penalty": cfg.length_penalty, "max_len": cfg.max_words + 2},
        "training": {
            "data": str(data), "images_train": len(train), "images_heldout": len(val),
            "captions_train": len(ids), "missing_images": len(captions.missing),
            "uncaptioned_images": len(captions.uncaptioned), "epochs_run": trainer.current_epoch,
            "best_epoch": best_epoch, "best_checkpoint": Path(best_path).name if best_path else None,
            "decoder_parameters": n_dec, "finetune_encoder": cfg.finetune_encoder, "seed": cfg.seed,
        },
    }
    for p in model.parameters():
        p.requires_grad_(True)
    model_dir = save_model_dir(model, model_config, run_dir / MODEL_SUBDIR)
    _say(f"trained {trainer.current_epoch} epochs in {(time.monotonic() - t0) / 60:.1f} min (best epoch {best_epoch}); "
         f"saved {model_dir}; captioning the held-out images ...")
    result = evaluate(run_dir, run_dir / HELDOUT_FILE, report=True)
    result.update({"run_dir": str(run_dir), "model_dir": str(model_dir), "fit_seconds": time.monotonic() - t0,
                   "decoder_parameters": n_dec})
    return result


def _read(path: Any):
    from transferkit.core.images import read_image

    return read_image(path)
