"""``classify fit`` and ``classify eval``: transfer learning for image classification."""

from __future__ import annotations

import argparse
import json
import sys

from transferkit.core.engine import is_rank_zero

ORDER = 20


def register(sub: argparse._SubParsersAction) -> None:
    from transferkit.core.config import add_config_args
    from transferkit.tasks.classify.config import ClassifyConfig

    p = sub.add_parser(
        "classify",
        help="train an image classifier by transfer learning (features, freeze, finetune, gradual)",
        description="Transfer learning from a pretrained CNN to your own labelled images.",
    )
    group = p.add_subparsers(dest="classify_command", metavar="SUBCOMMAND")

    q = group.add_parser(
        "fit",
        help="train a classifier; writes a run folder with the model and report.html",
        description="Train a classifier on DATA: a folder with one subfolder per class (optionally train/ and val/), "
        "or a CSV of path,label. Without a given validation folder a stratified, seeded split is made and recorded. "
        "The run folder ends with model/ (use it with `transferkit predict --model RUN_DIR`), report.html, "
        "metrics.csv, checkpoints/ and config.yaml (`--config RUN_DIR/config.yaml` reproduces the run).",
        epilog="Examples: transferkit classify fit photos/ --out run                       (features + logistic, fastest)\n"
        "          transferkit classify fit photos/ --out run --strategy finetune --epochs 8 --layer-decay 0.7\n"
        "          transferkit classify fit photos/ --out run --resume                     (continue an interrupted run)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    q.add_argument("data", metavar="DATA", help="class folders (optionally with train/ and val/) or a CSV of path,label")
    q.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder to create (must be new unless --resume)")
    q.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in RUN_DIR from its last checkpoint, with its saved config.yaml")
    add_config_args(q, ClassifyConfig)
    q.set_defaults(func=run_fit)

    q = group.add_parser(
        "eval",
        help="accuracy, per-class precision/recall/F1 and confusion matrix on labelled images",
        description="Evaluate a trained classifier (a run or model directory) on DATA: class folders named like the "
        "training classes (or DATA/val/), or a CSV of path,label.",
    )
    q.add_argument("run", metavar="RUN_DIR", help="run folder (or model directory) from `classify fit`")
    q.add_argument("data", metavar="DATA", help="labelled images: class folders or a CSV of path,label")
    q.add_argument("--json", action="store_true", help='print {"accuracy": ..., "per_class": {...}, "n": ...} as JSON')
    q.add_argument("--batch-size", type=int, default=32, help="images per batch (default: 32)")
    q.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    q.add_argument("--engine", default="auto", choices=("auto", "onnx", "torch", "eager"),
                   help="inference engine (default: auto = ONNX Runtime on CPU)")
    q.add_argument("--workers", type=int, default=None, help="DataLoader workers for decoding (default: automatic)")
    q.add_argument("--strict", action="store_true", help="fail on the first unreadable image instead of skipping it")
    q.set_defaults(func=run_eval)
    p.set_defaults(func=lambda args: _usage(p))


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_help()
    return 2


def run_fit(args: argparse.Namespace) -> int:
    from transferkit.cli._fit import resolve_fit_config
    from transferkit.tasks.classify.config import ClassifyConfig
    from transferkit.tasks.classify.train import fit

    cfg = resolve_fit_config(ClassifyConfig, args, required_by="classify fit")
    fit(cfg, args.data, args.out, resume=args.resume)
    if not is_rank_zero():
        return 0  # DDP: another rank trained alongside; rank 0 reports
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from transferkit.tasks.classify.evaluation import evaluate

    res = evaluate(args.run, args.data, batch_size=args.batch_size, device=args.device, engine=args.engine,
                   workers=args.workers, strict=args.strict)
    out = sys.stdout
    if args.json:
        keys = ("accuracy", "ci95", "per_class", "n", "macro_f1", "confusion_matrix", "classes", "skipped")
        out.write(json.dumps({k: res[k] for k in keys}, ensure_ascii=False) + "\n")
        return 0
    classes = res["classes"]
    lo, hi = res["ci95"]
    out.write(f"accuracy {res['accuracy']:.4f} on {res['n']} images (95% Wilson interval {lo:.3f}-{hi:.3f}; "
              f"macro F1 {res['macro_f1']:.4f})\n\n")
    width = max(8, *(len(c) for c in classes))
    out.write(f"{'class':<{width}}  precision  recall      f1  support\n")
    for c in classes:
        m = res["per_class"][c]
        out.write(f"{c:<{width}}  {m['precision']:9.4f}  {m['recall']:6.4f}  {m['f1']:6.4f}  {m['support']:7d}\n")
    out.write("\nconfusion matrix (rows: true, columns: predicted)\n")
    out.write(" " * (width + 2) + "  ".join(f"{c[:8]:>8}" for c in classes) + "\n")
    for c, row in zip(classes, res["confusion_matrix"]):
        out.write(f"{c:<{width}}  " + "  ".join(f"{v:>8d}" for v in row) + "\n")
    return 0
