"""``caption fit | eval | predict``: image captioning (pretrained CNN encoder + LSTM/GRU decoder)."""

from __future__ import annotations

import argparse
import json
import sys

from transferkit.core.engine import is_rank_zero

ORDER = 62

DATA_HELP = ("an image folder with captions.txt (CSV image,caption; several rows per image), a COCO captions_*.json "
             "(or a folder holding one), or a JSON lines file of {\"image\": ..., \"captions\": [...]}")


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser(
        "caption",
        help="train and use image captioning models",
        description="Image captioning: a pretrained CNN encoder (frozen, features cached once) and an LSTM/GRU "
        "decoder (Show and Tell; --attention soft: Show, Attend and Tell), greedy or beam-search decoding; "
        "scored by BLEU-1..4 and CIDEr-D.",
    )
    cmds = group.add_subparsers(dest="caption_command", metavar="COMMAND")

    p = cmds.add_parser(
        "fit",
        help="train a captioning model on captioned images",
        description=f"Train on DATA: {DATA_HELP}. Images without captions and captions without images are counted "
        "and named, not fatal. A seeded tenth of the images is held out for validation, early stopping and the "
        "final evaluation (RUN_DIR/heldout.jsonl, eval.json, report.html).",
    )
    p.add_argument("data", metavar="DATA", help="captioned images")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder (refuses to overwrite one unless --resume)")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from its last checkpoint")
    from transferkit.core.config import add_config_args
    from transferkit.tasks.caption.train import CaptionConfig

    add_config_args(p, CaptionConfig)
    p.add_argument("--json", action="store_true", help="print the held-out evaluation as JSON")
    p.set_defaults(func=run_fit)

    p = cmds.add_parser(
        "eval",
        help="BLEU-1..4, CIDEr-D and distinct captions on captioned images",
        description=f"Caption every image of DATA ({DATA_HELP}) and score against all its references: corpus "
        "BLEU-1..4 (sacrebleu, 0-100), CIDEr-D, and the share of distinct captions. Writes report.html into "
        "RUN_DIR. A run's own held-out images are RUN_DIR/heldout.jsonl.",
    )
    p.add_argument("model", metavar="RUN_DIR", help="run directory (or its model/ folder)")
    p.add_argument("data", metavar="DATA", help="captioned images")
    p.add_argument("--beam", type=int, default=None, metavar="K", help="beam size, 1 = greedy (default: the model's own)")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (default: 32)")
    p.add_argument("--no-report", dest="report", action="store_false", help="do not write report.html / eval.json")
    p.add_argument("--json", action="store_true",
                   help='print {"bleu1", "bleu2", "bleu3", "bleu4", "cider", "unique_ratio", "n_images", ...}')
    p.set_defaults(func=run_eval)

    p = cmds.add_parser(
        "predict",
        help="caption images",
        description="Caption image files (or folders of images) with a trained model.",
    )
    p.add_argument("model", metavar="RUN_DIR", help="run directory (or its model/ folder)")
    p.add_argument("images", nargs="+", metavar="IMAGES", help="image files, folders or glob patterns")
    p.add_argument("--beam", type=int, default=None, metavar="K", help="beam size, 1 = greedy (default: the model's own)")
    p.add_argument("--n", type=int, default=1, metavar="N", help="the N best captions with their scores (beam search)")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (default: 32)")
    p.add_argument("--json", action="store_true", help='JSON lines {"path", "caption", "score"} (and "captions" with --n)')
    p.add_argument("--regions", action="store_true",
                   help="also caption regions of each image (a --detector run's boxes, else selective search) and "
                   "draw box + caption into --draw-dir")
    p.add_argument("--detector", metavar="RUN_DIR", default=None, help="with --regions: a detect run whose boxes are the regions")
    p.add_argument("--max-regions", type=int, default=8, metavar="N", help="with --regions: at most N regions per image (default: 8)")
    p.add_argument("--draw-dir", metavar="DIR", default=".",
                   help="with --regions: where IMAGE_regions.png files are written (default: the current folder)")
    p.set_defaults(func=run_predict)
    group.set_defaults(func=lambda args: _group_help(group))


def _group_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _summary(r: dict) -> str:
    return (f"BLEU-1..4 {r['bleu1']:.1f} / {r['bleu2']:.1f} / {r['bleu3']:.1f} / {r['bleu4']:.1f}  CIDEr-D {r['cider']:.3f}"
            f"  distinct {r['unique_ratio']:.0%}  ({r['n_images']} images, beam {r['beam']})")


def _check(args: argparse.Namespace) -> None:
    from transferkit.errors import TransferkitError

    if args.beam is not None and args.beam < 1:
        raise TransferkitError("--beam must be at least 1.")
    if args.batch_size < 1:
        raise TransferkitError("--batch-size must be at least 1.")
    if getattr(args, "n", 1) < 1:
        raise TransferkitError("--n must be at least 1.")


def run_fit(args: argparse.Namespace) -> int:
    from transferkit.cli._fit import print_fit_result, resolve_fit_config
    from transferkit.tasks.caption.train import CaptionConfig, fit

    cfg = resolve_fit_config(CaptionConfig, args)
    r = fit(cfg, args.data, args.out, resume=args.resume)
    if not is_rank_zero():
        return 0  # DDP: another rank trained alongside; rank 0 reports
    print_fit_result(r, _summary, args.json)
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from transferkit.tasks.caption.captioner import evaluate

    _check(args)
    r = evaluate(args.model, args.data, beam=args.beam, batch_size=args.batch_size, report=args.report)
    print(json.dumps(r) if args.json else _summary(r))
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from transferkit.core.images import list_images
    from transferkit.errors import TransferkitError
    from transferkit.tasks.caption.captioner import Captioner

    _check(args)
    paths = list_images(args.images)
    if not paths:
        raise TransferkitError("No images found in " + ", ".join(args.images) + ".")
    cap = Captioner.load(args.model)
    if args.regions:
        return _predict_regions(args, cap, paths)
    rows = cap.caption(paths, beam=args.beam, n=args.n, batch_size=args.batch_size)
    bad = 0
    for r in rows:
        if r["caption"] is None:
            bad += 1
            print(f"warning: skipped {r['path']}: {r['error']}", file=sys.stderr)
            continue
        if args.json:
            print(json.dumps(r, ensure_ascii=False))
        elif args.n > 1:
            print(r["path"])
            for c in r["captions"]:
                print(f"  {c['score']:8.3f}  {c['caption']}")
        else:
            print(f"{r['path']}\t{r['caption']}" if len(rows) > 1 else r["caption"])
    if bad == len(rows):
        raise TransferkitError("None of the images could be read.")
    return 0


def _predict_regions(args: argparse.Namespace, cap, paths) -> int:
    """``--regions``: whole-image caption, then one caption per region; a drawing per image."""
    from pathlib import Path

    from transferkit.errors import ImageReadError, TransferkitError
    from transferkit.tasks.caption.regions import caption_regions, draw_regions

    if args.max_regions < 1:
        raise TransferkitError("--max-regions must be at least 1.")
    boxes_of: dict[str, list] = {}
    if args.detector:
        from transferkit.tasks.detect import predict as detect  # the detector's serving contract

        for r in detect(args.detector, [str(p) for p in paths]):
            boxes_of[str(r["path"])] = [b["xyxy"] for b in sorted(r["boxes"], key=lambda b: -b["score"])]
    out_dir = Path(args.draw_dir)
    done = 0
    for p in paths:
        try:
            r = caption_regions(cap, p, boxes_of.get(str(p), []) if args.detector else None, args.max_regions, args.beam)
        except ImageReadError as err:
            print(f"warning: skipped {err}", file=sys.stderr)
            continue
        drawn = draw_regions(p, r, out_dir / f"{Path(p).stem}_regions.png")
        done += 1
        if args.json:
            print(json.dumps({**r, "drawing": str(drawn)}, ensure_ascii=False))
        else:
            print(f"{p}\t{r['caption']}")
            for i, reg in enumerate(r["regions"]):
                x0, y0, x1, y1 = reg["xyxy"]
                print(f"  {i + 1}: [{x0:.0f},{y0:.0f},{x1:.0f},{y1:.0f}]  {reg['caption']}")
            print(f"  drawn: {drawn}")
    if not done:
        raise TransferkitError("None of the images could be read.")
    return 0
