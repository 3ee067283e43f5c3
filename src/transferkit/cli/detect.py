"""``detect fit|eval|predict``: object detection (yolo, rcnn, localize) on a pretrained backbone."""

from __future__ import annotations

import argparse
import json
import sys

from transferkit.core.engine import is_rank_zero

ORDER = 25

DATA_HELP = ("Pascal VOC (images/ + annotations/*.xml), YOLO txt (images/ + labels/*.txt + classes.txt), "
             "or COCO JSON (a .json file, or an images folder with --annotations FILE.json)")


def register(sub: argparse._SubParsersAction) -> None:
    from transferkit.core.config import add_config_args
    from transferkit.tasks.detect.config import DetectConfig

    group = sub.add_parser(
        "detect",
        help="object detection: train (yolo, rcnn, localize), evaluate (mAP), predict boxes",
        description="Find and name objects in images, starting from a pretrained backbone (offline).",
    )
    cmds = group.add_subparsers(dest="detect_command", metavar="COMMAND")
    group.set_defaults(func=lambda a: group.print_help() or 2)

    p = cmds.add_parser(
        "fit",
        help="train a detector; writes a run folder with report.html and model/",
        description="Train a detector on DATA (the format is recognised from its layout; a seeded part is held "
        "out for validation). Methods: yolo (default: single-shot grid detector on the backbone's multi-scale "
        "features), rcnn (selective search + cached CNN features + per-class linear classifiers with hard negatives + box regression), "
        "localize (one object per image: [p, x, y, w, h, c1..ck]; images with several boxes teach the largest).",
        epilog="Examples: transferkit detect fit raccoon/ --out runs/raccoon\n"
        "          transferkit detect fit cells/ --out runs/cells --image-size 416 --time-budget 20\n"
        "          transferkit detect fit photos/ --annotations coco.json --out runs/coco --method localize",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data", metavar="DATA", help=DATA_HELP)
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder to create (refused if it holds a run)")
    p.add_argument("--annotations", metavar="FILE.json", help="COCO annotation file (DATA is then the images folder)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in RUN_DIR (yolo, localize)")
    add_config_args(p, DetectConfig)
    p.set_defaults(func=run_fit)

    p = cmds.add_parser(
        "eval",
        help="mAP@0.5, mAP@[.5:.95] (overall and per class), precision/recall at the best F1, mean IoU",
        description="Evaluate a detector on labelled DATA. On the run's own training data only its held-out "
        "images are used (--split all: every image).",
    )
    p.add_argument("run", metavar="RUN_DIR", help="detect run (or model) folder")
    p.add_argument("data", metavar="DATA", help=DATA_HELP)
    p.add_argument("--annotations", metavar="FILE.json", help="COCO annotation file (DATA is then the images folder)")
    p.add_argument("--split", choices=("auto", "all"), default="auto",
                   help="auto: the held-out images when DATA is the training data, else all; all: every image")
    p.add_argument("--json", action="store_true",
                   help='print {"map50", "map", "per_class", "precision", "recall", "mean_iou", "n_images", ...}')
    p.set_defaults(func=run_eval)

    p = cmds.add_parser(
        "predict",
        help="boxes for images (table, JSON lines, pictures with boxes, pseudo-label files)",
        description="Detect objects in images (files, folders, globs). Boxes are in pixels of the original image.",
    )
    p.add_argument("run", metavar="RUN_DIR", help="detect run (or model) folder")
    p.add_argument("images", nargs="+", metavar="IMAGES", help="image files, folders (recursive) or globs")
    p.add_argument("--conf", type=float, default=None, help="score threshold (default: the model's, 0.25)")
    p.add_argument("--iou", type=float, default=None, help="IoU threshold of non-maximum suppression (default: 0.5)")
    p.add_argument("--max-det", type=int, default=None, help="at most this many boxes per image (default: 100)")
    p.add_argument("--save", metavar="DIR", help="write copies of the images with the boxes drawn into DIR")
    p.add_argument("--labels", choices=("voc", "yolo"),
                   help="write the boxes as annotation files into --save DIR (pseudo-labels to correct and train on)")
    p.add_argument("--json", action="store_true",
                   help='print JSON lines {"path": ..., "boxes": [{"label": ..., "score": ..., "xyxy": [x1, y1, x2, y2]}]}')
    p.add_argument("--strict", action="store_true", help="fail on the first unreadable image instead of skipping it")
    p.set_defaults(func=run_predict)


def run_fit(args: argparse.Namespace) -> int:
    from transferkit.cli._fit import resolve_fit_config
    from transferkit.tasks.detect import fit
    from transferkit.tasks.detect.config import DetectConfig

    cfg = resolve_fit_config(DetectConfig, args)
    run = fit(cfg, args.data, args.out, annotations=args.annotations, resume=args.resume)
    if not is_rank_zero():
        return 0  # DDP: another rank trained alongside; rank 0 reports
    res = json.loads((run / "metrics.json").read_text())
    if "map50" in res:
        print(f"held-out mAP@0.5 {res['map50']:.3f}, mAP@[.5:.95] {res['map']:.3f} on {res['n_images']} images "
              f"(precision {res['precision']:.3f}, recall {res['recall']:.3f}, mean IoU {res['mean_iou']:.3f})")
    print(f"wrote {run}/model and {run}/report.html")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from transferkit.tasks.detect import evaluate

    res = evaluate(args.run, args.data, annotations=args.annotations, split=args.split)
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"images:        {res['n_images']} ({res['split']}), {res['n_boxes']} boxes")
    print(f"mAP@0.5:       {res['map50']:.4f}")
    print(f"mAP@[.5:.95]:  {res['map']:.4f}")
    thr = res.get("threshold")
    print(f"best F1:       {res['f1']:.4f} at score {thr if thr is None else round(thr, 3)} "
          f"(precision {res['precision']:.4f}, recall {res['recall']:.4f})")
    print(f"mean IoU:      {res['mean_iou']:.4f} (matched boxes)")
    for name, v in res["per_class"].items():
        print(f"  {name:<20} mAP@0.5 {v['map50']:.4f}  mAP@[.5:.95] {v['map']:.4f}  ({v['n_boxes']} boxes)")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    from transferkit.errors import TransferkitError
    from transferkit.tasks.detect import predict

    if args.labels and not args.save:
        raise TransferkitError("--labels needs --save DIR (where the annotation files go).")
    results = predict(args.run, args.images, conf=args.conf, iou=args.iou, max_det=args.max_det, strict=args.strict)
    if args.save:
        from transferkit.core.images import read_image
        from transferkit.core.modeldir import load
        from transferkit.tasks.detect.train import draw_boxes, write_labels

        out = Path(args.save)
        out.mkdir(parents=True, exist_ok=True)
        for r in results:
            img = read_image(r["path"])
            w = max(2, round(max(img.size) / 200))
            img = draw_boxes(img, [b["xyxy"] for b in r["boxes"]], [b["label"] for b in r["boxes"]], "red",
                             [b["score"] for b in r["boxes"]], width=w)
            img.save(out / (Path(r["path"]).stem + ".png"))
        if args.labels:
            write_labels(results, out, args.labels, load(args.run).class_names)
    for r in results:
        if args.json:
            print(json.dumps({"path": r["path"], "boxes": r["boxes"]}))
        else:
            desc = ", ".join(f"{b['label']} {b['score']:.2f} [{', '.join(f'{v:.0f}' for v in b['xyxy'])}]" for b in r["boxes"])
            print(f"{r['path']}: {len(r['boxes'])} box{'es' if len(r['boxes']) != 1 else ''}" + (f": {desc}" if desc else ""))
    if args.save:
        print(f"wrote {len(results)} images with boxes to {args.save}", file=sys.stderr)
    return 0
