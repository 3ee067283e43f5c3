"""``novelty fit|score|eval``: flag images unlike the normal ones."""

from __future__ import annotations

import argparse
import json
import sys

from transferkit.core.engine import is_rank_zero

ORDER = 41


def register(sub: argparse._SubParsersAction) -> None:
    from transferkit.core.config import add_config_args
    from transferkit.tasks.novelty.config import NoveltyConfig

    group = sub.add_parser(
        "novelty",
        help="novelty detection: learn normal images, flag the unfamiliar",
        description="Learn what normal images look like (an autoencoder's reconstruction error, or distance to the "
        "nearest normal images in an embedding space), calibrate a threshold on held-out normal images, then score "
        "new images.",
    )
    cmds = group.add_subparsers(dest="novelty_command", metavar="COMMAND")
    group.set_defaults(func=lambda a: group.print_help() or 2)

    p = cmds.add_parser(
        "fit",
        help="learn normal images and calibrate the threshold",
        description="Learn the normal images of NORMAL_DATA and set the threshold at a percentile of held-out normal "
        "scores. Example: `transferkit novelty fit digits --normal-classes 0,1,2,3,4 --out runs/nov`. With "
        "--method reconstruction every `autoencoder fit` option applies (--kind, --latent, --epochs...).",
    )
    p.add_argument("data", metavar="NORMAL_DATA",
                   help="'digits', an MNIST IDX folder, or an image folder (all normal unless --normal-classes)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder to create")
    add_config_args(p, NoveltyConfig)
    p.set_defaults(func=run_fit)

    p = cmds.add_parser(
        "score",
        help="score images: higher = more novel; prints a verdict per image",
        description="Print each image's novelty score and its verdict (novel above the calibrated threshold).",
    )
    p.add_argument("run", metavar="RUN_DIR", help="run folder from `novelty fit`")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders or globs")
    p.add_argument("--json", action="store_true", help='one JSON object per image: {"path", "score", "novel"}')
    p.add_argument("--strict", action="store_true", help="fail on the first unreadable image instead of skipping it")
    p.set_defaults(func=run_score)

    p = cmds.add_parser(
        "eval",
        help="ROC-AUC on labelled normal/novel data",
        description="ROC-AUC of the scores on labelled DATA, and the rates at the threshold. Normal classes: "
        "--normal-classes, else those given at fit time, else a class folder named 'normal'. On the fit's own DATA "
        "its training images are left out.",
    )
    p.add_argument("run", metavar="RUN_DIR", help="run folder from `novelty fit`")
    p.add_argument("data", metavar="DATA", help="labelled: 'digits', MNIST, or class folders such as normal/ and novel/")
    p.add_argument("--normal-classes", metavar="LIST", help="comma-separated classes that are normal")
    p.add_argument("--plot", metavar="FILE.png", help="write histograms of normal and novel scores")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=run_eval)


def run_fit(args: argparse.Namespace) -> int:
    from transferkit.core.config import resolve
    from transferkit.tasks.novelty import fit
    from transferkit.tasks.novelty.config import NoveltyConfig

    cfg = resolve(NoveltyConfig, args)
    run = fit(cfg, args.data, args.out)
    if not is_rank_zero():
        return 0  # DDP: another rank trained alongside; rank 0 reports
    state = json.loads((run / "novelty.json").read_text())
    print(f"threshold {state['threshold']:.6g} ({cfg.percentile:g}th percentile of {state['n_calibration']} held-out "
          f"normal images; {state['calibration']['flagged']:.1%} of them flagged)")
    print(f"wrote {run}/novelty.json and {run}/report.html")
    return 0


def run_score(args: argparse.Namespace) -> int:
    from transferkit.tasks.novelty import score
    from transferkit.tasks.index.ops import display_name

    for r in score(args.run, args.paths, strict=args.strict):
        if args.json:
            print(json.dumps(r, ensure_ascii=False))
        else:
            print(f"{r['score']:.6g}  {'NOVEL ' if r['novel'] else 'normal'}  {display_name(r['path'])}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from transferkit.tasks.novelty import evaluate

    classes = [c.strip() for c in args.normal_classes.split(",") if c.strip()] if args.normal_classes else None
    res = evaluate(args.run, args.data, normal_classes=classes, plot=args.plot)
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"ROC-AUC:          {res['roc_auc']:.4f}")
    print(f"images:           {res['n_normal']} normal ({', '.join(res['normal_classes'])}), {res['n_novel']} novel"
          + (f" (the {res['training_images_left_out']} training images left out)" if res["training_images_left_out"] else ""))
    print(f"at threshold {res['threshold']:.4g}: {res['novel_flagged']:.1%} of novel flagged, "
          f"{res['normal_flagged']:.1%} of normal flagged, accuracy {res['accuracy']:.1%}")
    if args.plot:
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0
