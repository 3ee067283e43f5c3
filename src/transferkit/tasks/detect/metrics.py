"""Detection metrics: COCO mAP (torchmetrics ``MeanAveragePrecision``, pycocotools backend) and the rest.

:func:`evaluate_detections` takes predictions and truths (per image dicts of
``boxes`` xyxy, ``scores``, ``labels``) in the same pixel frame and returns:
``map50`` (VOC-style mAP at IoU 0.5, COCO's 101-point interpolation), ``map``
(mAP averaged over IoU 0.50:0.95), ``per_class`` (both, per class), and, at the
confidence threshold with the best F1 (detections matched greedily by score at
IoU >= 0.5, one detection per true box, same class): ``precision``, ``recall``,
``f1``, ``threshold``, plus ``mean_iou`` of those matched boxes.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch


def mean_average_precision(preds: Sequence[dict], truths: Sequence[dict], class_metrics: bool = True) -> dict[str, Any]:
    """torchmetrics' COCO-exact mAP; returns floats (and per-class lists when asked)."""
    from torchmetrics.detection import MeanAveragePrecision

    # sync_on_compute=False: the lists given are the whole evaluation (under DDP a process scores its own
    # share, or rank 0 alone scores the held-out set after training, when the other ranks have left)
    metric = MeanAveragePrecision(iou_type="bbox", class_metrics=class_metrics, backend="pycocotools",
                                  max_detection_thresholds=[1, 10, 100], sync_on_compute=False)
    metric.update([{k: v.detach().float().cpu() if k != "labels" else v.cpu().long() for k, v in p.items()} for p in preds],
                  [{"boxes": t["boxes"].float().cpu(), "labels": t["labels"].cpu().long()} for t in truths])
    res = metric.compute()
    out = {"map": float(res["map"]), "map50": float(res["map_50"])}
    if class_metrics:
        classes = res["classes"].reshape(-1).tolist()
        out["classes"] = [int(c) for c in classes]
        out["map_per_class"] = [float(v) for v in res["map_per_class"].reshape(-1)]
    return out


def match(preds: Sequence[dict], truths: Sequence[dict], iou_thr: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Greedy matching by score: (scores, is_true_positive, iou_of_match, class, number of true boxes) over all images."""
    from torchvision.ops import box_iou

    scores, tps, ious, classes = [], [], [], []
    n_true = 0
    for p, t in zip(preds, truths):
        n_true += len(t["boxes"])
        order = torch.argsort(p["scores"], descending=True)
        pb, ps, pl = p["boxes"][order].float(), p["scores"][order], p["labels"][order]
        iou = box_iou(pb, t["boxes"].float()) if len(pb) and len(t["boxes"]) else torch.zeros(len(pb), len(t["boxes"]))
        used = torch.zeros(len(t["boxes"]), dtype=torch.bool)
        for i in range(len(pb)):
            cand = iou[i].clone()
            if len(cand):
                cand[used | (t["labels"] != pl[i])] = -1
                j = int(cand.argmax())
                ok = float(cand[j]) >= iou_thr
            else:
                ok = False
            if ok:
                used[j] = True
            scores.append(float(ps[i]))
            tps.append(ok)
            ious.append(float(cand[j]) if ok else 0.0)
            classes.append(int(pl[i]))
    return np.array(scores), np.array(tps, dtype=bool), np.array(ious), np.array(classes, dtype=int), n_true


def pr_curve(scores: np.ndarray, tps: np.ndarray, n_true: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall at each score threshold (descending), and the thresholds."""
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(tps[order])
    fp = np.cumsum(~tps[order])
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / max(n_true, 1)
    return precision, recall, scores[order]


def evaluate_detections(preds: Sequence[dict], truths: Sequence[dict], class_names: Sequence[str]) -> dict[str, Any]:
    """All metrics of the module docstring, JSON-able."""
    m = mean_average_precision(preds, truths)
    scores, tps, ious, _, n_true = match(preds, truths)
    res: dict[str, Any] = {"map50": m["map50"], "map": m["map"], "n_images": len(truths), "n_boxes": n_true}
    if len(scores):
        precision, recall, thr = pr_curve(scores, tps, n_true)
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        i = int(np.argmax(f1))
        matched = tps[np.argsort(-scores, kind="stable")][: i + 1]
        iou_sorted = ious[np.argsort(-scores, kind="stable")][: i + 1]
        res.update(precision=float(precision[i]), recall=float(recall[i]), f1=float(f1[i]), threshold=float(thr[i]),
                   mean_iou=float(iou_sorted[matched].mean()) if matched.any() else 0.0)
    else:
        res.update(precision=0.0, recall=0.0, f1=0.0, threshold=None, mean_iou=0.0)
    # per class: mAP@0.5 from a per-class run, mAP@[.5:.95] from torchmetrics' per-class output
    per = {}
    map_by_label = dict(zip(m.get("classes", []), m.get("map_per_class", [])))
    for k, name in enumerate(class_names):
        pk = [{key: v[p["labels"] == k] for key, v in p.items()} for p in preds]
        tk = [{key: v[t["labels"] == k] for key, v in t.items()} for t in truths]
        n_k = int(sum(len(t["boxes"]) for t in tk))
        if n_k == 0:
            continue
        mk = mean_average_precision(pk, tk, class_metrics=False)
        per[name] = {"map50": mk["map50"], "map": float(map_by_label.get(k, mk["map"])), "n_boxes": n_k}
    res["per_class"] = per
    return res
