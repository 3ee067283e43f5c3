"""`autoencoder fit`, `eval`, `decode` and `finetune`: the task's Python API.

A run directory holds ``config.yaml``, ``split.json`` (held-out rows),
``checkpoints/``, ``metrics.csv``, ``pca.npz`` (the PCA baseline), ``metrics.json``
(held-out figures), ``report.html`` with its PNGs, and the model in ``model/``.
Stacked runs add ``layers/layerK/`` (one Lightning run per greedy layer) and
``layers/greedy.json`` (a fingerprint of every layer after every stage, which
shows the finished layers stayed frozen).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from transferkit.core.datasets import ArrayData
from transferkit.errors import TransferkitError
from transferkit.tasks.autoencoder.config import AEConfig, FinetuneConfig
from transferkit.tasks.autoencoder.data import (
    Split,
    grey_of,
    held_out_rows,
    make_split,
    read_data,
    save_split,
    source_id,
    to_float,
    to_uint8,
)

METRICS_FILE = "metrics.json"
MIN_EPOCH_SAMPLES = 1024  # finetune: small labelled sets are drawn with replacement up to this many per epoch


# --------------------------------------------------------------------------- model configs


def preprocessing_for(h: int, w: int) -> dict[str, Any]:
    """What `transferkit features`/`predict` must do to feed a file to this model: squash-resize, [0, 1] RGB.

    The network turns RGB into grey itself when it was trained on grey images.
    """
    from transferkit.core.backbones import Preprocessing

    pre = Preprocessing(input_size=(3, h, w), interpolation="bilinear", crop_pct=1.0, crop_mode="squash",
                        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return pre.to_dict()


def model_config(cfg: AEConfig, arrays: ArrayData, source: str) -> dict[str, Any]:
    """config.json of an autoencoder model directory."""
    h, w = arrays.images.shape[1:3]
    c = arrays.channels
    in_c = 1 if cfg.colorize else c
    net: dict[str, Any] = {"hidden": list(cfg.stack[:-1] if cfg.kind == "stacked" else cfg.hidden)}
    if cfg.network == "conv":
        net = {"channels": list(cfg.channels)}
    latent = cfg.stack[-1] if cfg.kind == "stacked" else cfg.latent
    return {
        "task": "autoencoder",
        "architecture": cfg.network,
        "kind": cfg.kind,
        "input_shape": [in_c, int(h), int(w)],
        "out_channels": int(c),
        **net,
        "latent": int(latent),
        "code_activation": "sigmoid" if (cfg.kind == "sparse" and cfg.sparsity == "kl") else "linear",
        "colorize": bool(cfg.colorize),
        "noise": {"kind": cfg.noise, "level": cfg.level} if cfg.kind == "denoising" else None,
        "class_names": [],  # not a classifier; the data's classes are in data.classes
        "preprocessing": preprocessing_for(int(h), int(w)),
        "data": {"source": source, "size": [int(h), int(w)], "channels": int(c),
                 "classes": list(arrays.classes) if arrays.labels is not None else []},
    }


def build_network(config: dict[str, Any]):
    """The untrained network a model config describes (see :func:`transferkit.tasks.autoencoder.build_model`)."""
    from transferkit.tasks.autoencoder.models import ConvAE, DenseAE, EncoderClassifier

    arch = config.get("architecture")
    if arch == "encoder_classifier":
        ae = build_network(config["encoder"])
        return EncoderClassifier(ae, int(config["encoder"]["latent"]), int(config["num_classes"]),
                                 float(config.get("dropout", 0.0)))
    shape = [int(v) for v in config["input_shape"]]
    latent, out_c, act = int(config["latent"]), int(config["out_channels"]), config.get("code_activation", "linear")
    if arch == "dense":
        return DenseAE(shape, [int(v) for v in config["hidden"]], latent, out_c, act)
    if arch == "conv":
        return ConvAE(shape, [int(v) for v in config["channels"]], latent, out_c, act)
    raise TransferkitError(f"Unknown autoencoder architecture {arch!r} in the model config.")


def check_data(cfg: AEConfig, arrays: ArrayData) -> None:
    """Errors that depend on the data: colour for --colorize, codes smaller than the input, enough images."""
    n = len(arrays)
    if n < 2:
        raise TransferkitError(f"{arrays.source} has {n} image(s); an autoencoder needs at least 2.")
    h, w = arrays.images.shape[1:3]
    c = arrays.channels
    if cfg.colorize and c != 3:
        raise TransferkitError(f"--colorize needs colour images; {arrays.source} is grey.")
    d = (1 if cfg.colorize else c) * h * w
    sizes = cfg.stack if cfg.kind == "stacked" else (*((cfg.hidden) if cfg.network == "dense" else ()), cfg.latent)
    latent = sizes[-1]
    if latent > d:
        raise TransferkitError(
            f"--latent {latent} is larger than the input ({c}x{h}x{w} = {d} values); a code must compress the image.")
    if cfg.kind == "stacked" and sizes[0] >= d:
        raise TransferkitError(
            f"--layers must shrink from the input size {d} (got {','.join(map(str, sizes))}).")


# --------------------------------------------------------------------------- training stages


def set_threads(threads: int | None) -> None:
    """torch.set_num_threads when asked (one thread is much faster when other jobs share a small CPU)."""
    if threads is not None:
        import torch

        torch.set_num_threads(int(threads))


def _loader(x, batch_size: int, shuffle: bool, seed: int, y=None, min_samples: int = 0):
    """In-memory batches; with ``min_samples`` a small set is drawn with replacement up to that many per epoch."""
    import torch

    from transferkit.core.engine import make_loader

    ds = torch.utils.data.TensorDataset(x) if y is None else torch.utils.data.TensorDataset(x, y)
    if shuffle and len(ds) < min_samples:
        sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=min_samples,
                                                 generator=torch.Generator().manual_seed(seed))
        return make_loader(ds, batch_size, shuffle=False, workers=0, in_memory=True, seed=seed, sampler=sampler,
                           drop_last=True)
    return make_loader(ds, batch_size, shuffle=shuffle, workers=0, in_memory=True, seed=seed,
                       drop_last=shuffle and len(ds) > batch_size)


def _train_stage(module, cfg, stage_dir: Path, epochs: int, train_loader, val_loader, resume: bool, prefix: str = "",
                 monitor: str | None = "auto") -> None:
    """One Lightning run in ``stage_dir`` (checkpoints, metrics.csv), then the best weights restored."""
    from transferkit.core import engine

    if monitor == "auto":
        monitor = "val_loss" if val_loader is not None else "train_loss"
    trainer = engine.make_trainer(cfg, stage_dir, monitor=monitor, max_epochs=epochs, log_prefix=prefix)
    can_resume = resume and (stage_dir / engine.CHECKPOINT_DIR / engine.LAST).is_file()
    engine.fit(trainer, module, train_loader, val_loader, run_dir=stage_dir, resume=can_resume)
    if monitor is not None:
        engine.restore_best(trainer, module)


def fingerprint(module) -> str:
    """Short hash of a module's parameters (to show a layer did not change)."""
    h = hashlib.sha1()
    for name, p in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def greedy_pretrain(net, cfg: AEConfig, run_dir: Path, x_train, x_val, resume: bool = False,
                    on_stage_end: Callable[[int, Any], None] | None = None) -> list[dict[str, Any]]:
    """Greedy layer-wise pretraining of a DenseAE, pair by pair (Hinton & Salakhutdinov 2006, Bengio et al. 2007).

    Stage k trains ``encoder.layers[k]``/``decoder.layers[k]`` on the codes of the
    frozen layers before it; each stage is its own Lightning run in
    ``layers/layer{k+1}``.  Returns one record per stage (sizes, final losses,
    every layer's fingerprint after the stage), also written to ``layers/greedy.json``.
    """
    from safetensors.torch import load_file

    from transferkit.core import engine
    from transferkit.core.engine import metrics_by_epoch
    from transferkit.core.modeldir import atomic_write_text, save_tensors
    from transferkit.tasks.autoencoder.module import GreedyLayerModule

    layers_dir = run_dir / "layers"
    records: list[dict[str, Any]] = []
    n_layers = len(net.encoder.layers)
    epochs = cfg.layer_epochs if cfg.layer_epochs is not None else cfg.epochs_for(len(x_train))
    for k in range(n_layers):
        stage_dir = layers_dir / f"layer{k + 1}"
        done = stage_dir / "weights.safetensors"
        a, b = net.sizes[k], net.sizes[k + 1]
        if resume and done.is_file():
            net.load_state_dict(load_file(str(done)))
        else:
            stage_dir.mkdir(parents=True, exist_ok=True)
            print(f"greedy layer {k + 1}/{n_layers}: {a} -> {b} -> {a}", file=sys.stderr, flush=True)
            module = GreedyLayerModule(net, k, cfg.lr)
            _train_stage(module, cfg, stage_dir, epochs, _loader(x_train, cfg.batch_size, True, cfg.seed + k),
                         None if x_val is None else _loader(x_val, 1024, False, 0), resume,
                         prefix=f"layer {k + 1}: ")
            if engine.is_rank_zero():
                save_tensors(net.state_dict(), done)
        for p in net.parameters():
            p.requires_grad_(True)
        m = metrics_by_epoch(stage_dir)
        last = {key: m[key][-1][1] for key in ("train_loss", "val_loss") if m.get(key)}
        records.append({
            "layer": k + 1, "sizes": [a, b], **last,
            "fingerprints": [fingerprint(nn_pair) for nn_pair in _pairs(net)],
        })
        if on_stage_end is not None:
            on_stage_end(k, net)
    if engine.is_rank_zero():
        atomic_write_text(layers_dir / "greedy.json", json.dumps(records, indent=2))
    return records


def _pairs(net) -> list[Any]:
    import torch

    return [torch.nn.ModuleList([e, d]) for e, d in zip(net.encoder.layers, net.decoder.layers)]


def fit(cfg: AEConfig, data: str | os.PathLike | ArrayData, out: str | os.PathLike, resume: bool = False,
        on_stage_end: Callable[[int, Any], None] | None = None,
        split: tuple[Sequence[int], Sequence[int]] | None = None) -> Path:
    """Train an autoencoder on DATA and write the run directory ``out``; returns its path.

    Args:
        cfg: the resolved :class:`AEConfig`.
        data: ``digits``, an MNIST IDX folder, an image folder, or an :class:`ArrayData`.
        resume: continue an interrupted run in ``out``.
        on_stage_end: stacked only, called as ``f(k, net)`` after greedy layer k (tests use it).
        split: (training rows, held-out rows) of DATA, instead of a split by
            ``cfg.val_fraction`` (novelty detection brings its own).
    """
    from transferkit.core import config as cfgmod
    from transferkit.core import engine
    from transferkit.core.modeldir import save_model_dir
    from transferkit.tasks.autoencoder.evaluation import PCA_FILE, LinearBaseline
    from transferkit.tasks.autoencoder.module import AutoencoderModule

    cfg.validate()
    arrays = read_data(data, cfg.size, cfg.grayscale)  # bad data fails before any folder is made
    check_data(cfg, arrays)
    source = source_id(data)
    run_dir = Path(out)
    if resume and cfg.kind == "stacked":
        if not (run_dir / "config.yaml").is_file():
            raise TransferkitError(f"Nothing to resume in {run_dir}: no config.yaml.")
    else:
        engine.prepare_run_dir(run_dir, resume)
    engine.seed_everything(cfg.seed)
    set_threads(cfg.threads)
    if split is None:
        rows = make_split(arrays, cfg.val_fraction, cfg.seed, cfg.max_images)
    else:
        rows = Split([int(i) for i in split[0]], [int(i) for i in split[1]], arrays.source, len(arrays))
    if len(rows.train) < 2:
        raise TransferkitError(f"{source} leaves {len(rows.train)} training image(s) after the split; give more images.")
    split = rows
    if engine.is_rank_zero():  # DDP: the other ranks compute the same seeded split and write nothing
        cfgmod.save(cfg, run_dir / "config.yaml")
        save_split(split, run_dir, source)
    x = to_float(arrays.images)  # (N, C, H, W) in [0, 1]
    x_train = x[split.train]
    x_val = x[split.held_out] if split.held_out else None
    mconf = model_config(cfg, arrays, source)
    net = build_network(mconf)
    if not resume:
        net.init_output(x_train.mean(dim=0))  # (C, H, W) mean image
    print(f"autoencoder {cfg.kind} ({mconf['architecture']}, code {mconf['latent']}): {len(x_train)} training images, "
          f"{0 if x_val is None else len(x_val)} held out, {tuple(x.shape[1:])}", file=sys.stderr, flush=True)

    greedy: list[dict[str, Any]] = []
    if cfg.kind == "stacked":
        greedy = greedy_pretrain(net, cfg, run_dir, x_train, x_val, resume, on_stage_end)
        epochs = cfg.unrolled_epochs if cfg.unrolled_epochs is not None else cfg.epochs_for(len(x_train)) // 2
        lr = cfg.lr / 2  # the unrolled stack is already good: a gentler end-to-end pass
    else:
        epochs, lr = cfg.epochs_for(len(x_train)), cfg.lr
    if epochs > 0:
        objective = {"kind": cfg.kind, "colorize": cfg.colorize, "noise": cfg.noise, "level": cfg.level,
                     "sparsity": cfg.sparsity, "penalty": cfg.penalty, "target": cfg.sparsity_target}
        module = AutoencoderModule(net, objective, lr)
        _train_stage(module, cfg, run_dir, epochs, _loader(x_train, cfg.batch_size, True, cfg.seed),
                     None if x_val is None else _loader(x_val, 1024, False, 0), resume)
    if not engine.is_rank_zero():
        return run_dir  # DDP: the other ranks trained alongside; rank 0 evaluates and writes the results
    net.eval()
    mconf["training"] = {"kind": cfg.kind, "epochs": epochs, "n_train": len(x_train),
                         "n_held_out": 0 if x_val is None else len(x_val), "seed": cfg.seed}
    save_model_dir(net, mconf, run_dir / "model")

    flat_in = (grey_of(x_train) if cfg.colorize else x_train).flatten(1).numpy()
    baseline = LinearBaseline.fit(flat_in, x_train.flatten(1).numpy() if cfg.colorize else None, mconf["latent"], cfg.seed)
    baseline.save(run_dir / PCA_FILE)

    shown = x_val if x_val is not None else x_train
    shown_labels = None
    if arrays.labels is not None:
        rows = split.held_out if x_val is not None else split.train
        shown_labels = arrays.labels[rows]
    from transferkit.tasks.autoencoder.evaluation import metrics

    res = metrics(net, shown, mconf, baseline)
    res["split"] = "held-out" if x_val is not None else "training"
    from transferkit.core.modeldir import atomic_write_text

    atomic_write_text(run_dir / METRICS_FILE, json.dumps(res, indent=2))
    write_report(run_dir, cfg, mconf, net, shown, shown_labels, arrays.classes, res, greedy)
    return run_dir


# --------------------------------------------------------------------------- report


def write_report(run_dir: Path, cfg: AEConfig, mconf: dict[str, Any], net, x, labels, classes, res: dict[str, Any],
                 greedy: Sequence[dict[str, Any]] = ()) -> Path:
    """report.html: figures table, loss curves, reconstructions, latent plane, greedy stages, config."""
    import torch

    from transferkit.core import config as cfgmod
    from transferkit.core.engine import metrics_by_epoch
    from transferkit.core.report import Report, plot_curves
    from transferkit.tasks.autoencoder import pictures
    from transferkit.tasks.autoencoder.evaluation import psnr, reconstruct

    rep = Report(run_dir, f"Autoencoder ({cfg.kind}, {mconf['architecture']}, code {mconf['latent']})")
    where = f"{res['split']} images ({res['n']})"
    rows = [["autoencoder", res["mse"], res["psnr"]]]
    if res.get("pca_mse") is not None:
        rows.append([f"{'PCA regression' if cfg.colorize else 'PCA'}-{mconf['latent']}", res["pca_mse"], res["pca_psnr"]])
    rows.append(["mean image", res["mean_image_mse"], psnr(res["mean_image_mse"])])
    if "denoised_mse" in res:
        rows.append([f"denoised ({cfg.noise} {cfg.level:g})", res["denoised_mse"], psnr(res["denoised_mse"])])
    if "noisy_mse" in res:
        rows.append([f"noisy input ({cfg.noise} {cfg.level:g})", res["noisy_mse"], psnr(res["noisy_mse"])])
    rep.heading("Reconstruction")
    rep.table(["model", "MSE per pixel", "PSNR (dB)"], rows, caption=f"on {where}")
    if res.get("ratio") is not None:
        rep.text(f"autoencoder / PCA MSE ratio: {res['ratio']:.3f}")

    metrics = metrics_by_epoch(run_dir)
    if metrics.get("train_loss"):
        rep.figure(plot_curves(metrics, ["train_loss", "val_loss"], ylabel="loss", logy=True), "curves.png",
                   "Training and validation loss per epoch")

    n_show = min(10, len(x))
    sample = x[:n_show]
    colorize = bool(mconf.get("colorize"))
    ins, outs = reconstruct(net, sample, colorize=colorize)
    noisy = grey = None
    if cfg.kind == "denoising":
        ins, outs = reconstruct(net, sample, noise=(cfg.noise, cfg.level), colorize=colorize)
        noisy = to_uint8(ins)
    elif colorize:
        grey = to_uint8(ins)
    fig = pictures.reconstruction_grid(to_uint8(sample), to_uint8(outs), noisy=noisy, inputs_grey=grey)
    what = "noisy inputs and " if noisy is not None else ("grey inputs and " if grey is not None else "")
    rep.figure(fig, "reconstructions.png", f"Originals, {what}reconstructions ({res['split']} images)")

    if mconf["latent"] == 2:
        with torch.inference_mode():
            codes = net.encode(grey_of(x) if colorize else x).numpy()
        rep.figure(pictures.latent_scatter(codes, labels, classes), "latent_scatter.png",
                   "2-D codes coloured by label")
        lo, hi = pictures.plane_limits(codes)
        rep.figure(pictures.latent_manifold(net, lo, hi), "latent_grid.png",
                   "Images decoded on a grid across the latent plane (2nd to 98th percentile of the codes)")

    if greedy:
        rep.heading("Greedy layer-wise pretraining")
        table = []
        for r in greedy:
            k = r["layer"]
            # layer k is finished at stage k: its fingerprint must equal the one after the last stage
            frozen = all(g["fingerprints"][k - 1] == r["fingerprints"][k - 1] for g in greedy[k - 1:])
            table.append([k, f"{r['sizes'][0]} -> {r['sizes'][1]}", r.get("train_loss", float("nan")),
                          r.get("val_loss", float("nan")), "yes" if frozen else "NO", r["fingerprints"][k - 1]])
        rep.table(["layer", "sizes", "train loss", "val loss", "unchanged by later stages", "weights hash"], table,
                  caption="each layer's autoencoder trained on the codes of the frozen layers before it")
        for r in greedy:
            m = metrics_by_epoch(run_dir / "layers" / f"layer{r['layer']}")
            if m.get("train_loss"):
                rep.figure(plot_curves(m, ["train_loss", "val_loss"], ylabel="loss", logy=True),
                           f"layer{r['layer']}_curves.png", f"Greedy layer {r['layer']}")
    rep.config(cfgmod.to_dict(cfg))
    return rep.write()


# --------------------------------------------------------------------------- eval / decode


def load_autoencoder(run_dir: str | os.PathLike):
    """(TransferModel, run folder) of an autoencoder run or model directory; classifiers are refused."""
    from transferkit.core.modeldir import find_model_dir, load

    found = find_model_dir(run_dir)
    if found is None:
        raise TransferkitError(f"{run_dir} is not an autoencoder run or model directory (no config.json).")
    tm = load(found)
    if tm.task != "autoencoder" or tm.config.get("architecture") not in ("dense", "conv"):
        raise TransferkitError(f"{run_dir} holds a {tm.task}/{tm.config.get('architecture')} model, not an autoencoder.")
    run = found.parent if found.name == "model" else found
    return tm, run


def arrays_for(config: dict[str, Any], data: str | os.PathLike | ArrayData) -> ArrayData:
    """Read DATA the way the model's training data was read, and check the shapes agree."""
    d = config["data"]
    h, w = d["size"]
    channels = int(d["channels"])
    arrays = read_data(data, (h, w), grayscale=channels == 1)
    ih, iw = arrays.images.shape[1:3]
    if (ih, iw) != (h, w):
        raise TransferkitError(f"{source_id(data)} holds {ih}x{iw} images; this model was trained on {h}x{w}.")
    if arrays.channels != channels:
        kind = {1: "grey", 3: "colour"}
        raise TransferkitError(
            f"{source_id(data)} holds {kind.get(arrays.channels)} images; this model was trained on "
            f"{kind.get(channels)} ones.")
    return arrays


def evaluate(run_dir: str | os.PathLike, data: str | os.PathLike | ArrayData, split: str = "auto") -> dict[str, Any]:
    """Reconstruction MSE, PSNR and PCA MSE of a run on DATA.

    Args:
        split: ``auto`` = the rows the run held out when DATA is its training
            data, else all of DATA; ``all`` = every row.
    """
    from transferkit.tasks.autoencoder.evaluation import PCA_FILE, LinearBaseline, metrics

    tm, run = load_autoencoder(run_dir)
    arrays = arrays_for(tm.config, data)
    rows = held_out_rows(run, data, len(arrays)) if split == "auto" else None
    x = to_float(arrays.images if rows is None else arrays.images[rows])
    pca_path = run / PCA_FILE
    baseline = LinearBaseline.load(pca_path) if pca_path.is_file() else None
    res = metrics(tm.module, x, tm.config, baseline)
    res["split"] = "held-out" if rows is not None else "all"
    return res


def parse_z(text: str | Sequence[float], latent: int) -> np.ndarray:
    """'20,20' -> array of ``latent`` floats, or a clear error."""
    if isinstance(text, str):
        try:
            vals = [float(v) for v in text.replace(" ", "").split(",") if v != ""]
        except ValueError:
            raise TransferkitError(f"--z must be {latent} comma-separated numbers (got {text!r}).") from None
    else:
        vals = [float(v) for v in text]
    if len(vals) != latent:
        raise TransferkitError(f"--z needs {latent} numbers for this model's {latent}-dimensional code (got {len(vals)}).")
    if not all(np.isfinite(vals)):
        raise TransferkitError("--z values must be finite numbers.")
    return np.asarray(vals, dtype=np.float32)


def decode(run_dir: str | os.PathLike, z: str | Sequence[float], out: str | os.PathLike, scale: int = 1) -> Path:
    """Decode one latent point to an image file (the model's H x W, times ``scale``)."""
    from transferkit.tasks.autoencoder.pictures import decode_points, save_png

    if scale < 1:
        raise TransferkitError("--scale must be at least 1.")
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise TransferkitError(f"--out must be a .png file (got {out}).")
    tm, _ = load_autoencoder(run_dir)
    point = parse_z(z, int(tm.config["latent"]))
    img = decode_points(tm.module, point[None])[0]
    return save_png(img, out, scale)


# --------------------------------------------------------------------------- finetune


def _stratified_subset(labels: np.ndarray, n: int, seed: int) -> list[int]:
    """``n`` indices, classes taken in turn (seeded), so a small labelled set stays balanced."""
    rng = np.random.default_rng(seed)
    pools = {c: list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels)}
    out: list[int] = []
    while len(out) < n and any(pools.values()):
        for c in sorted(pools):
            if pools[c] and len(out) < n:
                out.append(int(pools[c].pop()))
    return sorted(out)


def finetune(run_dir: str | os.PathLike, data: str | os.PathLike | ArrayData, out: str | os.PathLike,
             cfg: FinetuneConfig, split: tuple[Sequence[int], Sequence[int]] | None = None) -> Path:
    """The five steps: (1-2) the pretrained, frozen encoder of ``run_dir``; (3) a new linear head;
    (4) train the head; (5) unfreeze everything and fine-tune with a lower learning rate.

    With ``cfg.init == "random"`` the same network starts from random weights
    and every parameter trains in both steps (the baseline without pretraining).
    Test accuracy is measured on the held-out rows (the autoencoder run's own
    held-out rows when DATA is its training data), or on ``split`` = (labelled
    pool rows, test rows) when given.
    """
    import torch

    from transferkit.core import config as cfgmod
    from transferkit.core import engine
    from transferkit.core.modeldir import atomic_write_text, save_model_dir
    from transferkit.core.datasets import stratified_split
    from transferkit.tasks.autoencoder.models import EncoderClassifier
    from transferkit.tasks.autoencoder.module import ClassifierModule

    cfg.validate()
    tm, ae_run = load_autoencoder(run_dir)
    if tm.config.get("colorize"):
        raise TransferkitError("A colourisation autoencoder's encoder sees grey images only; fine-tune a plain one.")
    arrays = arrays_for(tm.config, data)
    if arrays.labels is None:
        raise TransferkitError(
            f"{source_id(data)} has no labels; finetune needs digits, MNIST with its labels file, or class folders.")
    if len(np.unique(arrays.labels)) < 2:
        raise TransferkitError(f"{source_id(data)} has a single class; a classifier needs at least two.")
    out = engine.prepare_run_dir(out, resume=False)
    engine.seed_everything(cfg.seed)
    set_threads(cfg.threads)
    rows = held_out_rows(ae_run, data, len(arrays)) if split is None else None
    if split is not None:
        pool, test = [int(i) for i in split[0]], [int(i) for i in split[1]]
        how = "the given split"
    elif rows is not None:
        test = rows
        held = set(rows)
        pool = [i for i in range(len(arrays)) if i not in held]
        how = "the autoencoder run's held-out rows"
    else:
        pool, test = stratified_split(arrays.labels, cfg.val_fraction, cfg.seed)
        how = f"a stratified {cfg.val_fraction:.0%} split, seed {cfg.seed}"
    if cfg.num_labelled is not None and cfg.num_labelled < len(pool):
        pool_arr = np.asarray(pool)
        pool = pool_arr[_stratified_subset(arrays.labels[pool_arr], cfg.num_labelled, cfg.seed)].tolist()
    if engine.is_rank_zero():  # DDP: rank 0 writes the run folder
        cfgmod.save(cfg, out / "config.yaml")
    classes = list(arrays.classes)
    n_classes = max(len(classes), int(arrays.labels.max()) + 1)
    x = to_float(arrays.images)
    y = torch.as_tensor(arrays.labels, dtype=torch.long)
    x_tr, y_tr, x_te, y_te = x[pool], y[pool], x[test], y[test]
    print(f"finetune ({cfg.init} encoder): {len(pool)} labelled training images, {len(test)} test images ({how})",
          file=sys.stderr, flush=True)

    ae = tm.module
    if cfg.init == "random":
        ae = build_network(tm.config)
    latent = int(tm.config["latent"])
    net = EncoderClassifier(ae, latent, n_classes, cfg.dropout)
    # an epoch is at least MIN_EPOCH_SAMPLES draws, so 100 labelled images still get enough steps per epoch
    train_loader = _loader(x_tr, min(cfg.batch_size, len(x_tr)), True, cfg.seed, y_tr, min_samples=MIN_EPOCH_SAMPLES)
    test_loader = _loader(x_te, 1024, False, 0, y_te)

    def accuracy() -> tuple[float, np.ndarray]:
        net.eval()
        with torch.inference_mode():
            pred = torch.cat([net(xb).argmax(1) for (xb,) in _loader(x_te, 1024, False, 0)])
        return float((pred == y_te).float().mean()), pred.numpy()

    results: dict[str, Any] = {"init": cfg.init, "n_train": len(pool), "n_test": len(test), "split": how}
    if cfg.head_epochs > 0:
        frozen = cfg.init == "pretrained"
        print(f"step 4: {'head on the frozen encoder' if frozen else 'all layers (random init)'}, "
              f"{cfg.head_epochs} epochs", file=sys.stderr, flush=True)
        module = ClassifierModule(net, cfg.lr, freeze_encoder=frozen)
        _train_stage(module, cfg, out / "head", cfg.head_epochs, train_loader, test_loader, False,
                     prefix="head: ", monitor=None)
        results["accuracy_head"], _ = accuracy()
    if cfg.epochs > 0:
        print(f"step 5: everything unfrozen, lr {cfg.finetune_lr:g}, {cfg.epochs} epochs", file=sys.stderr, flush=True)
        module = ClassifierModule(net, cfg.finetune_lr, freeze_encoder=False)
        _train_stage(module, cfg, out, cfg.epochs, train_loader, test_loader, False, prefix="finetune: ", monitor=None)
    if not engine.is_rank_zero():
        return out  # DDP: the other ranks trained alongside; rank 0 evaluates and writes the results
    results["accuracy"], pred = accuracy()
    for p in net.parameters():
        p.requires_grad_(True)
    net.eval()
    enc_conf = {k: v for k, v in tm.config.items() if k not in ("format", "format_version", "transferkit_version",
                                                                 "training", "preprocessing", "class_names")}
    mconf = {
        "task": "autoencoder",
        "architecture": "encoder_classifier",
        "encoder": enc_conf,
        "num_classes": n_classes,
        "class_names": classes[:n_classes] if len(classes) >= n_classes else [str(i) for i in range(n_classes)],
        "dropout": cfg.dropout,
        "preprocessing": tm.config["preprocessing"],
        "data": tm.config["data"],
        "training": {**results, "autoencoder": str(Path(run_dir).resolve())},
    }
    save_model_dir(net, mconf, out / "model")
    atomic_write_text(out / METRICS_FILE, json.dumps(results, indent=2))
    _finetune_report(out, cfg, results, y_te.numpy(), pred, mconf["class_names"])
    return out


def _finetune_report(out: Path, cfg: FinetuneConfig, results: dict[str, Any], y_true: np.ndarray, y_pred: np.ndarray,
                     classes: Sequence[str]) -> Path:
    from transferkit.core import config as cfgmod
    from transferkit.core.engine import metrics_by_epoch
    from transferkit.core.report import Report, confusion_figure, plot_curves

    rep = Report(out, f"Classifier on a {cfg.init} autoencoder encoder")
    rows = []
    if "accuracy_head" in results:
        rows.append(["step 4: head" + (" (frozen encoder)" if cfg.init == "pretrained" else ""), results["accuracy_head"]])
    rows.append(["step 5: fine-tuned", results["accuracy"]])
    rep.table(["after", "test accuracy"], rows,
              caption=f"{results['n_train']} labelled training images, {results['n_test']} test images ({results['split']})")
    for name, folder in (("head", out / "head"), ("finetune", out)):
        m = metrics_by_epoch(folder)
        if m.get("train_loss"):
            rep.figure(plot_curves(m, ["train_loss", "val_loss", "train_acc", "val_acc"], title=name),
                       f"{name}_curves.png", f"{name}: loss and accuracy (val = the test rows, not used for selection)")
    k = len(classes)
    cm = np.zeros((k, k), dtype=int)
    for t, p in zip(y_true, y_pred):
        cm[int(t), int(p)] += 1
    rep.figure(confusion_figure(cm, classes), "confusion.png", "Test confusion matrix")
    rep.config(cfgmod.to_dict(cfg))
    return rep.write()
