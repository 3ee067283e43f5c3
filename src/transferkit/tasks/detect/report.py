"""``report.html`` of a detector run: curves, metrics, PR curves, confusion matrix, boxes on validation images."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np


def confusion_with_background(pairs: Sequence[tuple[Any, dict]], k: int, threshold: float, iou_thr: float = 0.5) -> np.ndarray:
    """(K+1, K+1) counts, rows true, columns predicted; index K is background (missed boxes, false detections)."""
    from torchvision.ops import box_iou

    m = np.zeros((k + 1, k + 1), dtype=int)
    for rec, p in pairs:
        keep = p["scores"] >= threshold
        pb, pl = p["boxes"][keep], p["labels"][keep]
        tb, tl = rec.boxes, rec.labels
        used = set()
        if len(pb) and len(tb):
            iou = box_iou(tb, pb)
            for i in range(len(tb)):
                row = iou[i].clone()
                for j in used:
                    row[j] = -1
                j = int(row.argmax())
                if float(row[j]) >= iou_thr:
                    used.add(j)
                    m[int(tl[i]), int(pl[j])] += 1
                else:
                    m[int(tl[i]), k] += 1
        else:
            for i in range(len(tb)):
                m[int(tl[i]), k] += 1
        for j in range(len(pb)):
            if j not in used:
                m[k, int(pl[j])] += 1
    return m


def write_report(run_dir: Path, cfg: Any, ds: Any, train_recs: Sequence[Any], val_recs: Sequence[Any],
                 preds: Sequence[tuple[Any, dict]], result: dict[str, Any]) -> Path:
    from transferkit.core import config as cfgmod
    from transferkit.core.engine import metrics_by_epoch
    from transferkit.core.images import read_image
    from transferkit.core.report import Report, confusion_figure, plot_curves, plt
    from transferkit.tasks.detect.metrics import match, pr_curve
    from transferkit.tasks.detect.train import draw_boxes

    names = ds.class_names
    rep = Report(run_dir, f"Object detection ({cfg.method}, {cfg.backbone})")
    rep.heading("Data")
    rep.text(f"{ds.summary()}. Training images: {len(train_recs)}; held-out validation images: {len(val_recs)} "
             f"(seeded split, seed {cfg.seed}).")
    rep.heading("Held-out results")
    if "map50" in result:
        rows = [["all", f"{result['map50']:.3f}", f"{result['map']:.3f}", result.get("n_boxes", "")]]
        rows += [[c, f"{v['map50']:.3f}", f"{v['map']:.3f}", v["n_boxes"]] for c, v in result.get("per_class", {}).items()]
        rep.table(["class", "mAP@0.5", "mAP@[.5:.95]", "boxes"], rows)
        thr = result.get("threshold")
        rep.text(f"At the best-F1 score threshold ({thr if thr is None else round(thr, 3)}): precision "
                 f"{result['precision']:.3f}, recall {result['recall']:.3f}, F1 {result['f1']:.3f}, mean IoU of matched "
                 f"boxes {result['mean_iou']:.3f}. Inference {result.get('seconds_per_image', 0) * 1000:.0f} ms per image. "
                 f"Training took {result.get('train_seconds', 0):.0f} s.")
    else:
        rep.text("No validation images (val_fraction 0): no held-out figures.")
    m = metrics_by_epoch(run_dir)
    if m:
        rep.heading("Training curves")
        rep.figure(plot_curves(m, ["train_loss", "val_loss"], "Loss", "loss"), "curves_loss.png")
        if "val_map50" in m:
            rep.figure(plot_curves(m, ["val_map50", "val_map"], "Validation mAP", "mAP"), "curves_map.png")
    if preds:
        # precision-recall per class
        pyplot = plt()
        fig, ax = pyplot.subplots(figsize=(5.5, 4))
        for k, name in enumerate(names):
            pk = [{key: v[p["labels"] == k] for key, v in p.items()} for _, p in preds]
            tk = [{"boxes": r.boxes[r.labels == k], "labels": r.labels[r.labels == k]} for r, _ in preds]
            s, tp, _, _, n = match(pk, tk)
            if n and len(s):
                prec, rec, _ = pr_curve(s, tp, n)
                ax.plot(rec, prec, label=name)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.set_title("Precision-recall at IoU 0.5 (validation)")
        rep.figure(fig, "pr_curves.png")
        thr = result.get("threshold") or cfg.conf
        cm = confusion_with_background(preds, len(names), thr)
        rep.figure(confusion_figure(cm, [*names, "background"], f"Confusion at score >= {thr:.2f}, IoU 0.5"), "confusion.png")
        # validation images: true boxes green, predictions red
        tiles = []
        for rec, p in preds[:12]:
            try:
                img = read_image(rec.path)
            except Exception:  # noqa: BLE001
                continue
            w = max(2, round(max(img.size) / 150))
            img = draw_boxes(img, rec.boxes.tolist(), [names[int(l)] for l in rec.labels], "lime", width=w)
            keep = p["scores"] >= thr
            img = draw_boxes(img, p["boxes"][keep].tolist(), [names[int(l)] for l in p["labels"][keep]], "red",
                             p["scores"][keep].tolist(), width=w)
            img.thumbnail((320, 320))
            tiles.append(np.asarray(img))
        if tiles:
            from transferkit.core.report import image_grid

            rep.figure(image_grid(tiles, [Path(r.path).name for r, _ in preds[:len(tiles)]], ncols=4, size=3.0),
                       "val_boxes.png", "Validation images: true boxes green, predictions red (with scores)")
    # label statistics
    boxes = [r.boxes / np.array([r.width, r.height, r.width, r.height], dtype=np.float32) for r in train_recs if len(r.boxes)]
    if boxes:
        b = np.concatenate([np.asarray(x) for x in boxes])
        labels = np.concatenate([np.asarray(r.labels) for r in train_recs if len(r.boxes)])
        pyplot = plt()
        fig, axes = pyplot.subplots(1, 3, figsize=(12, 3.6))
        axes[0].bar(range(len(names)), np.bincount(labels, minlength=len(names)))
        axes[0].set_xticks(range(len(names)), names, rotation=45 if len(names) > 4 else 0, fontsize=8)
        axes[0].set_title("boxes per class")
        axes[1].scatter((b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, s=4, alpha=0.4)
        axes[1].set_xlim(0, 1)
        axes[1].set_ylim(1, 0)
        axes[1].set_title("box centres (fraction of the image)")
        axes[2].scatter(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1], s=4, alpha=0.4)
        axes[2].set_xlim(0, 1)
        axes[2].set_ylim(0, 1)
        axes[2].set_title("box width vs height (fraction)")
        fig.tight_layout()
        rep.figure(fig, "labels.png", "Label statistics of the training images")
    rep.config(cfgmod.to_dict(cfg))
    return rep.write()
