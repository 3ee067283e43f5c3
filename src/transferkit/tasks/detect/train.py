"""``fit``, ``evaluate`` and ``predict`` for detectors.

A run folder holds ``config.yaml``, ``split.json``, ``checkpoints/``, ``metrics.csv``,
``metrics.json`` (the held-out evaluation), ``report.html`` and ``model/`` (a model
directory: ``config.json`` + ``model.safetensors``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from transferkit.errors import TransferkitError
from transferkit.tasks.detect.config import DetectConfig

TASK = "detect"


def _net_for(cfg: DetectConfig, num_classes: int):
    """(untrained network with the pretrained backbone loaded, model config dict)."""
    from transferkit.core.backbones import _entry_for
    from transferkit.tasks.detect.model import Localizer, YoloDetector, freeze_stages, load_pretrained_body

    entry = _entry_for(cfg.backbone)
    pre = entry.preprocessing
    arch = entry.architecture
    if cfg.method == "yolo":
        net = YoloDetector(arch, num_classes, pre.mean, pre.std, (2, 3, 4), cfg.neck_channels)
    elif cfg.method == "localize":
        net = Localizer(arch, num_classes, pre.mean, pre.std)
    else:
        raise ValueError(cfg.method)
    pre, source = load_pretrained_body(net, cfg.backbone, cfg.weights)
    net.norm.mean.copy_(torch.tensor(list(pre.mean)).view(1, -1, 1, 1))
    net.norm.std.copy_(torch.tensor(list(pre.std)).view(1, -1, 1, 1))
    freeze_stages(net.body, cfg.stages_to_freeze())
    return net, arch, pre, source


def model_config(cfg: DetectConfig, arch: str, pre: Any, class_names: Sequence[str], extra: dict | None = None,
                 training: dict | None = None) -> dict[str, Any]:
    """The ``config.json`` of a detector's model directory."""
    s = int(cfg.image_size)
    net_in = int(cfg.crop_size) if cfg.method == "rcnn" else s  # rcnn's network sees warped proposals
    return {
        "task": TASK,
        "architecture": arch,
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "preprocessing": {"input_size": [3, net_in, net_in], "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "squash",
                          "mean": list(pre.mean), "std": list(pre.std)},
        "detect": {"method": cfg.method, "image_size": s, "out_indices": [2, 3, 4], "neck_channels": cfg.neck_channels,
                   "conf": cfg.conf, "iou": cfg.iou, "max_det": cfg.max_det, **(extra or {})},
        "training": {"backbone": cfg.backbone, **(training or {})},
    }


def fit(cfg: DetectConfig, data: str | os.PathLike, run_dir: str | os.PathLike, annotations: str | os.PathLike | None = None,
        resume: bool = False) -> Path:
    """Train a detector on DATA (VOC / COCO / YOLO txt); returns the run folder (see the module docstring)."""
    from transferkit.core import config as cfgmod
    from transferkit.core.engine import is_rank_zero, make_loader, make_trainer, prepare_run_dir, restore_best, seed_everything
    from transferkit.core.engine import fit as engine_fit
    from transferkit.core.modeldir import atomic_write_text, save_model_dir
    from transferkit.tasks.detect.data import DetDataset, collate, load_resized, read_dataset, split_records, train_transform
    from transferkit.tasks.detect.module import DetectModule

    if hasattr(cfg, "validate"):
        cfg.validate()
    if cfg.method != "rcnn":  # config.yaml records the stages actually frozen
        cfg = dataclasses.replace(cfg, freeze_stages=cfg.stages_to_freeze())
    ds = read_dataset(data, annotations)
    print(f"data: {ds.summary()}", file=sys.stderr)
    if ds.n_boxes == 0:
        raise TransferkitError(f"{data} holds no boxes to learn from ({ds.summary()}).")
    seed_everything(cfg.seed)
    # the network before any file is written: a --freeze-stages past the backbone's stages or unreadable --weights
    # then stop the run with nothing of it on disk (the seeded split below draws from its own generator)
    built = _net_for(cfg, len(ds.class_names)) if cfg.method != "rcnn" else None
    run_dir = prepare_run_dir(run_dir, resume)
    tr_idx, va_idx = split_records(ds.records, cfg.val_fraction, cfg.seed)
    if is_rank_zero():  # DDP: the other ranks compute the same seeded split and write nothing
        cfgmod.save(cfg, run_dir / "config.yaml")
        atomic_write_text(run_dir / "split.json", json.dumps({
            "seed": cfg.seed, "format": ds.format, "train": [str(ds.records[i].path) for i in tr_idx],
            "val": [str(ds.records[i].path) for i in va_idx], "dropped_boxes": ds.dropped_boxes,
            "bad_files": [list(b) for b in ds.bad_files]}, indent=1))
    train_recs = [ds.records[i] for i in tr_idx]
    val_recs = [ds.records[i] for i in va_idx]
    if cfg.method == "localize":
        several = sum(1 for r in train_recs if len(r.boxes) > 1)
        if several:
            print(f"localize: {several} training image{'s hold' if several != 1 else ' holds'} several boxes; "
                  "it learns the largest box of each image", file=sys.stderr)
    t0 = time.perf_counter()
    if cfg.method == "rcnn":
        from transferkit.tasks.detect.rcnn import fit_rcnn

        net, arch, pre, source, info = fit_rcnn(cfg, train_recs, ds.class_names, run_dir)
        extra = {"num_features": int(net.num_features), "proposals": cfg.proposals, "crop_size": cfg.crop_size}
    else:
        size = cfg.image_size
        keep_t, imgs_t, boxes_t = load_resized(train_recs, size)
        keep_v, imgs_v, boxes_v = load_resized(val_recs, size)
        train_set = DetDataset(imgs_t, boxes_t, [train_recs[i].labels for i in keep_t],
                               train_transform(size, cfg.flip, cfg.scale_jitter, cfg.color_jitter))
        val_set = DetDataset(imgs_v, boxes_v, [val_recs[i].labels for i in keep_v])
        net, arch, pre, source = built
        if cfg.channels_last:
            net = net.to(memory_format=torch.channels_last)
        steps = cfg.epochs * max(1, -(-len(train_set) // cfg.batch_size))
        module = DetectModule(net, cfg, steps)
        tl = make_loader(train_set, cfg.batch_size, shuffle=True, workers=cfg.workers, in_memory=True,
                         drop_last=len(train_set) > cfg.batch_size, seed=cfg.seed, collate_fn=collate)
        vl = make_loader(val_set, cfg.batch_size, shuffle=False, workers=cfg.workers, in_memory=True,
                         collate_fn=collate) if len(val_set) else None
        kw: dict[str, Any] = {}
        if cfg.time_budget:
            from datetime import timedelta

            kw["max_time"] = timedelta(minutes=cfg.time_budget)
        monitor = "val_map50" if vl is not None else None
        trainer = make_trainer(cfg, run_dir, monitor=monitor, mode="max", **kw)
        engine_fit(trainer, module, tl, vl, run_dir=run_dir, resume=resume)
        if not is_rank_zero():
            return run_dir  # DDP: the other ranks trained alongside; rank 0 evaluates and writes the results
        if monitor:
            restore_best(trainer, module)
        net = module.net.cpu().eval().to(memory_format=torch.contiguous_format)
        info = {"epochs_run": int(trainer.current_epoch), "steps": int(trainer.global_step)}
        extra = {}
    train_s = time.perf_counter() - t0
    mcfg = model_config(cfg, arch, pre, ds.class_names, extra,
                        {"source": source, "train_seconds": round(train_s, 1), "n_train": len(train_recs), **info})
    save_model_dir(net, mcfg, run_dir / "model")
    # held-out evaluation and the report
    result: dict[str, Any] = {"split": "held-out" if val_recs else "none", "train_seconds": round(train_s, 1), **info}
    preds = []
    if val_recs:
        from transferkit.core.modeldir import TransferModel

        model = TransferModel(net, mcfg)
        ev, preds = _evaluate_records(model, val_recs, ds.class_names)
        result.update(ev)
    atomic_write_text(run_dir / "metrics.json", json.dumps(result, indent=1))
    from transferkit.tasks.detect.report import write_report

    write_report(run_dir, cfg, ds, train_recs, val_recs, preds, result)
    return run_dir


# --------------------------------------------------------------------------- inference


def _load(model_or_dir: Any):
    from transferkit.core.modeldir import TransferModel, load

    model = model_or_dir if isinstance(model_or_dir, TransferModel) else load(model_or_dir)
    if model.task != TASK:
        raise TransferkitError(f"That model was trained for {model.task!r}, not detection; use a `detect fit` run.")
    return model


def _detect_images(model: Any, images: Sequence[Any], sizes: Sequence[tuple[int, int]], conf: float, iou: float,
                   max_det: int, batch_size: int = 8) -> list[dict[str, torch.Tensor]]:
    """Detections for PIL images, boxes in pixels of each original image."""
    import numpy as np
    from PIL import Image

    det = model.config["detect"]
    s = int(det["image_size"])
    net = model.module.eval()
    if det["method"] == "rcnn":
        return net.detect_images(images, conf=conf, iou=iou, max_det=max_det, proposals=int(det.get("proposals", 300)),
                                 crop_size=int(det.get("crop_size", 96)))
    runner = _network_runner(model, s)
    out: list[dict[str, torch.Tensor]] = []
    for i in range(0, len(images), batch_size):
        chunk = images[i:i + batch_size]
        x = torch.stack([torch.from_numpy(np.asarray(im.resize((s, s), Image.BILINEAR)).copy()).permute(2, 0, 1)
                         for im in chunk]).float() / 255.0
        raw = torch.from_numpy(runner(x))  # (N, A, 5 + K)
        with torch.inference_mode():
            dets = net.detect(raw, s, conf=conf, iou=iou, max_det=max_det)
        for d, (w, h) in zip(dets, sizes[i:i + batch_size]):
            scale = torch.tensor([w / s, h / s, w / s, h / s])
            out.append({"boxes": d["boxes"].float() * scale, "scores": d["scores"].float(), "labels": d["labels"].long()})
    return out


def _network_runner(model: Any, size: int):
    """The detector's network (image -> raw outputs) as a :class:`~transferkit.core.inference.Runner`: ONNX
    Runtime on a CPU (BENCHMARKS.md, object detection: faster than eager PyTorch there), torch on a GPU.
    Built once per loaded model and input size (the export takes a second or two)."""
    from transferkit.core.inference import Runner

    cached = model.__dict__.get("_detect_runner")
    if cached is None or cached[0] != size:
        cached = (size, Runner(model.module.eval(), (3, size, size)))
        model.__dict__["_detect_runner"] = cached
    return cached[1]


def _evaluate_records(model: Any, records: Sequence[Any], class_names: Sequence[str]) -> tuple[dict[str, Any], list]:
    from transferkit.core.images import read_image
    from transferkit.errors import ImageReadError
    from transferkit.tasks.detect.metrics import evaluate_detections

    imgs, sizes, truths, kept = [], [], [], []
    for r in records:
        try:
            img = read_image(r.path)
        except ImageReadError as err:
            print(f"warning: skipped {err.path}: {err.reason}", file=sys.stderr)
            continue
        imgs.append(img)
        sizes.append(img.size)
        truths.append({"boxes": r.boxes, "labels": r.labels})
        kept.append(r)
    det = model.config["detect"]
    t0 = time.perf_counter()
    preds = _detect_images(model, imgs, sizes, conf=0.001, iou=float(det.get("iou", 0.5)), max_det=int(det.get("max_det", 100)))
    secs = time.perf_counter() - t0
    res = evaluate_detections(preds, truths, class_names)
    res["seconds_per_image"] = secs / max(1, len(imgs))
    return res, list(zip(kept, preds))


def evaluate(run: str | os.PathLike, data: str | os.PathLike, annotations: str | os.PathLike | None = None,
             split: str = "auto") -> dict[str, Any]:
    """mAP@0.5, mAP@[.5:.95], per class, best-F1 precision/recall, mean IoU on DATA.

    ``split="auto"``: when DATA is the run's own training data, only its held-out images are used.
    """
    from transferkit.core.modeldir import find_model_dir
    from transferkit.tasks.detect.data import read_dataset

    model = _load(run)
    names = model.class_names
    ds = read_dataset(data, annotations, class_names=names)
    records = ds.records
    split_file = Path(run) / "split.json"
    used = "all"
    if split == "auto" and split_file.is_file() and find_model_dir(run) != Path(run):
        sp = json.loads(split_file.read_text())
        train = set(sp.get("train", []))
        if any(str(r.path) in train for r in records):
            val = set(sp.get("val", []))
            records = [r for r in records if str(r.path) in val]
            used = "held-out"
            if not records:
                raise TransferkitError(f"{data} is the run's training data and it held no images out.")
    res, _ = _evaluate_records(model, records, names)
    res["split"] = used
    res["dropped_boxes"] = ds.dropped_boxes
    return res


def predict(model_or_dir: Any, inputs: Sequence[str | os.PathLike] | str, conf: float | None = None,
            iou: float | None = None, max_det: int | None = None, strict: bool = False) -> list[dict[str, Any]]:
    """Boxes for images (files, folders, globs): ``[{"path", "width", "height", "boxes": [{"label", "score", "xyxy"}]}]``.

    ``xyxy`` are pixels of the original image (upright: EXIF orientation applied).  Unreadable images are
    skipped with a warning (an error with ``strict``).
    """
    from transferkit.core.images import SkipLog, list_images, read_image
    from transferkit.errors import ImageReadError

    model = _load(model_or_dir)
    det = model.config["detect"]
    conf = float(det.get("conf", 0.25) if conf is None else conf)
    iou = float(det.get("iou", 0.5) if iou is None else iou)
    max_det = int(det.get("max_det", 100) if max_det is None else max_det)
    paths = list_images([inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs))
    skips = SkipLog(strict=strict)
    names = model.class_names
    results: list[dict[str, Any]] = []
    batch = 16
    for i in range(0, len(paths), batch):
        imgs, sizes, ok = [], [], []
        for p in paths[i:i + batch]:
            try:
                im = read_image(p)
            except ImageReadError as err:
                skips.add(err)
                continue
            imgs.append(im)
            sizes.append(im.size)
            ok.append(p)
        if not imgs:
            continue
        for p, (w, h), d in zip(ok, sizes, _detect_images(model, imgs, sizes, conf, iou, max_det)):
            results.append({
                "path": str(p), "width": int(w), "height": int(h),
                "boxes": [{"label": names[int(l)], "score": round(float(s), 4),
                           "xyxy": [round(float(v), 1) for v in b]}
                          for b, s, l in zip(d["boxes"], d["scores"], d["labels"])],
            })
    if skips.summary():
        print(skips.summary(), file=sys.stderr)
    return results


def write_labels(results: Sequence[dict[str, Any]], out_dir: str | os.PathLike, fmt: str, class_names: Sequence[str]) -> Path:
    """Pseudo-labels from ``predict`` results: VOC XML (``out/annotations/``) or YOLO txt (``out/labels/`` + classes.txt)."""
    from xml.sax.saxutils import escape

    from transferkit.core.modeldir import atomic_write_text

    out = Path(out_dir)
    if fmt == "yolo":
        atomic_write_text(out / "classes.txt", "\n".join(class_names) + "\n")
        for r in results:
            w, h = r["width"], r["height"]
            lines = []
            for b in r["boxes"]:
                x1, y1, x2, y2 = b["xyxy"]
                lines.append(f"{class_names.index(b['label'])} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} "
                             f"{(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}")
            atomic_write_text(out / "labels" / f"{Path(r['path']).stem}.txt", "\n".join(lines) + ("\n" if lines else ""))
        return out
    for r in results:
        objs = "".join(
            f"<object><name>{escape(b['label'])}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
            f"<bndbox><xmin>{round(b['xyxy'][0])}</xmin><ymin>{round(b['xyxy'][1])}</ymin><xmax>{round(b['xyxy'][2])}</xmax>"
            f"<ymax>{round(b['xyxy'][3])}</ymax></bndbox></object>" for b in r["boxes"])
        xml = (f"<annotation><filename>{escape(Path(r['path']).name)}</filename><size><width>{r['width']}</width>"
               f"<height>{r['height']}</height><depth>3</depth></size>{objs}</annotation>\n")
        atomic_write_text(out / "annotations" / f"{Path(r['path']).stem}.xml", xml)
    return out


def draw_boxes(img: Any, boxes: Sequence[Sequence[float]], labels: Sequence[str], color: str = "red",
               scores: Sequence[float] | None = None, width: int = 2):
    """A copy of a PIL image with boxes and their labels drawn."""
    from PIL import ImageDraw

    img = img.copy()
    d = ImageDraw.Draw(img)
    for i, (b, l) in enumerate(zip(boxes, labels)):
        d.rectangle([float(v) for v in b], outline=color, width=width)
        text = l if scores is None else f"{l} {scores[i]:.2f}"
        d.text((float(b[0]) + 2, float(b[1]) + 1), text, fill=color)
    return img
