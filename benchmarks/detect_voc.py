"""Object detection on a Pascal VOC folder (raccoon, BCCD): each method trained for the same time budget, one split.

    python benchmarks/detect_voc.py ../shared/data/raccoon --methods yolo,localize --time-budget 10

Every method is trained by ``transferkit.tasks.detect.fit`` with the same seed, so the same seeded
split (``--val-fraction``, default 0.2) holds out the same images, which are never trained on; their
figures (mAP@0.5, mAP@[.5:.95], best-F1 precision/recall, mean IoU) come from the run's held-out
evaluation.  Then ``detect predict`` speed is timed on the held-out images (decoding and drawing-free
JSON included, default size, default score threshold).  With ``--reference``, torchvision's
``FasterRCNN`` on the same pretrained backbone (+ FPN) is trained for the same wall time on the same
split and scored by the same metric code.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def faster_rcnn_reference(data: Path, run_dir: Path, minutes: float, image_size: int, seed: int, val_fraction: float):
    """torchvision FasterRCNN + FPN on EfficientNet-Lite0 features, trained for ``minutes``; held-out metrics."""
    import torch
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import BackboneWithFPN  # noqa: F401 (documentation)
    from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

    from transferkit.tasks.detect.config import DetectConfig
    from transferkit.tasks.detect.data import DetDataset, collate, load_resized, read_dataset, split_records, train_transform
    from transferkit.tasks.detect.metrics import evaluate_detections
    from transferkit.tasks.detect.model import YoloDetector, load_pretrained_body

    torch.manual_seed(seed)
    ds = read_dataset(data, quiet=True)
    tr, va = split_records(ds.records, val_fraction, seed)
    trr, var = [ds.records[i] for i in tr], [ds.records[i] for i in va]
    k_t, im_t, bx_t = load_resized(trr, image_size, quiet=True)
    k_v, im_v, bx_v = load_resized(var, image_size, quiet=True)
    train = DetDataset(im_t, bx_t, [trr[i].labels for i in k_t], train_transform(image_size))
    holder = YoloDetector("efficientnet_lite0", len(ds.class_names), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    pre, _ = load_pretrained_body(holder, "efficientnet_lite0", "pretrained")

    class Body(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = holder.body
            self.fpn = FeaturePyramidNetwork(holder.body.feature_info.channels(), 128, LastLevelMaxPool())
            self.out_channels = 128

        def forward(self, x):
            return self.fpn({str(i): f for i, f in enumerate(self.body(x))})

    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    anchors = AnchorGenerator(sizes=((32,), (64,), (128,), (256,)), aspect_ratios=((0.5, 1.0, 2.0),) * 4)
    pool = MultiScaleRoIAlign(featmap_names=["0", "1", "2"], output_size=7, sampling_ratio=2)
    model = FasterRCNN(Body(), num_classes=len(ds.class_names) + 1, min_size=image_size, max_size=image_size,
                       image_mean=list(pre.mean), image_std=list(pre.std), rpn_anchor_generator=anchors,
                       box_roi_pool=pool)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
    loader = torch.utils.data.DataLoader(train, batch_size=8, shuffle=True, collate_fn=collate, drop_last=True)
    t0, steps, epochs = time.monotonic(), 0, 0
    model.train()
    while time.monotonic() - t0 < minutes * 60:
        for x, targets in loader:
            targets = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets]
            keep = [i for i, t in enumerate(targets) if len(t["boxes"])]
            if not keep:
                continue
            losses = model([x[i] for i in keep], [targets[i] for i in keep])
            loss = sum(losses.values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
            if time.monotonic() - t0 >= minutes * 60:
                break
        epochs += 1
    train_s = time.monotonic() - t0
    model.eval()
    preds, truths = [], []
    t1 = time.monotonic()
    with torch.inference_mode():
        for j, i in enumerate(k_v):
            r = var[i]
            out = model([im_v[j].float() / 255])[0]
            scale = torch.tensor([r.width / image_size, r.height / image_size] * 2)
            preds.append({"boxes": out["boxes"] * scale, "scores": out["scores"], "labels": out["labels"] - 1})
            truths.append({"boxes": r.boxes, "labels": r.labels})
    res = evaluate_detections(preds, truths, ds.class_names)
    res.update(train_seconds=round(train_s, 1), steps=steps, epochs_run=epochs,
               seconds_per_image=(time.monotonic() - t1) / max(1, len(preds)))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--methods", default="yolo,localize", help="comma-separated: yolo, localize, rcnn")
    ap.add_argument("--time-budget", type=float, default=10.0, help="training minutes per method (default: 10)")
    ap.add_argument("--epochs", type=int, default=None, help="epoch cap of yolo/localize (default: the config's)")
    ap.add_argument("--image-size", type=int, default=320)
    ap.add_argument("--backbone-lr", type=float, default=None, help="backbone learning-rate factor (0 freezes; default: the config's)")
    ap.add_argument("--proposals", type=int, default=None, help="rcnn: selective-search proposals per image (default: the config's)")
    ap.add_argument("--crop-size", type=int, default=None, help="rcnn: warp size of the proposals (default: the config's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--reference", action="store_true", help="also train torchvision FasterRCNN for the same time")
    ap.add_argument("--out", type=Path, default=None, help="keep the run folders here (default: a temporary folder)")
    args = ap.parse_args()

    from transferkit.tasks.detect import DetectConfig, fit, predict
    from transferkit.tasks.detect.data import read_dataset, split_records

    out = args.out or Path(tempfile.mkdtemp(prefix="detect-bench-"))
    ds = read_dataset(args.data, quiet=True)
    _, va = split_records(ds.records, args.val_fraction, args.seed)
    val_paths = [str(ds.records[i].path) for i in va]
    print(f"{args.data}: {ds.summary()}; held out {len(va)} images (seed {args.seed})")
    rows = []
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        extra = {k: v for k, v in (("epochs", args.epochs), ("backbone_lr", args.backbone_lr),
                                   ("proposals", args.proposals), ("crop_size", args.crop_size)) if v is not None}
        cfg = DetectConfig(method=method, image_size=args.image_size, time_budget=args.time_budget,
                           seed=args.seed, val_fraction=args.val_fraction, **extra)
        run = fit(cfg, args.data, out / method)
        res = json.loads((run / "metrics.json").read_text())
        predict(run, val_paths[:2])  # warm-up
        t0 = time.perf_counter()
        predict(run, val_paths)
        ips = len(val_paths) / (time.perf_counter() - t0)
        rows.append((method, res, ips))
        print(f"{method}: {json.dumps(res)}; predict {ips:.2f} images/s", flush=True)
    if args.reference:
        res = faster_rcnn_reference(args.data, out / "frcnn", args.time_budget, args.image_size, args.seed, args.val_fraction)
        rows.append(("torchvision FasterRCNN (reference)", res, 1.0 / max(res["seconds_per_image"], 1e-9)))
        print(f"reference: {json.dumps(res)}", flush=True)
    print("\n| method | mAP@0.5 | mAP@[.5:.95] | precision | recall | mean IoU | train s | epochs | images/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for m, r, ips in rows:
        print(f"| {m} | {r['map50']:.3f} | {r['map']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | {r['mean_iou']:.3f} | "
              f"{r.get('train_seconds', 0):.0f} | {r.get('epochs_run', '')} | {ips:.1f} |")


if __name__ == "__main__":
    main()
