"""``siamese fit | eval | calibrate | verify | make-runs``: one-shot learning with Siamese networks."""

from __future__ import annotations

import argparse
import json
import sys

from transferkit.core.engine import is_rank_zero

ORDER = 40


def register(sub: argparse._SubParsersAction) -> None:
    from transferkit.core.config import add_config_args
    from transferkit.tasks.siamese.config import SiameseConfig

    p = sub.add_parser(
        "siamese",
        help="Siamese networks: one-shot learning, N-way k-shot evaluation, verification against a gallery",
        description="Learn a distance between images so that a new class can be recognised from one example.",
    )
    group = p.add_subparsers(dest="siamese_command", metavar="SUBCOMMAND")

    q = group.add_parser(
        "fit",
        help="train a Siamese network (pair, contrastive, triplet, supcon or multisimilarity loss); writes a run folder",
        description="Train twin encoders with shared weights on DATA: a folder with one subfolder per class, or "
        "Omniglot (alphabet/character/*.png, as a folder or the official .zip files). A fraction of the classes is "
        "held out to measure one-shot accuracy on unseen classes, pick the best epoch and a first verification "
        "threshold. The run folder ends with model/, report.html, metrics.csv, checkpoints/ and config.yaml. "
        "The defaults are the measured configuration for Omniglot on a 2-core CPU (BENCHMARKS.md).",
        epilog="Examples: transferkit siamese fit images_background_small1.zip --out run\n"
        "          transferkit siamese fit faces/ --out run --loss triplet --margin 0.2 --encoder efficientnet_lite0 "
        "--image-size 112\n"
        "          transferkit siamese fit chars/ --out run --loss pair --time-budget 10\n"
        "          transferkit siamese fit chars/ --out run --resume          (continue an interrupted run)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    q.add_argument("data", metavar="DATA", help="class folders, or Omniglot (folder or .zip)")
    q.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder to create (must be new unless --resume)")
    q.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in RUN_DIR from its last checkpoint, with its saved config.yaml")
    add_config_args(q, SiameseConfig)
    q.set_defaults(func=run_fit)

    q = group.add_parser(
        "eval",
        help="N-way k-shot accuracy on classes the model never saw (or on Lake et al.'s runs)",
        description="Draw seeded N-way k-shot episodes from the classes of DATA the model never saw (its training "
        "classes, and for Omniglot its training alphabets, are excluded) and report the accuracy with a 95% "
        "confidence interval. With --runs DIR, score the one-shot runs format of Lake et al. (2015) instead: "
        "runNN/training/classNN.png, runNN/test/itemNN.png, runNN/class_labels.txt.",
        epilog="Examples: transferkit siamese eval run images_background_small2.zip --way 20 --shot 1 --episodes 400\n"
        "          transferkit siamese eval run --runs all_runs/ --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    q.add_argument("run", metavar="RUN_DIR", help="run folder (or model directory) from `siamese fit`")
    q.add_argument("data", metavar="DATA", nargs="?", help="labelled images: class folders or Omniglot (folder or .zip)")
    q.add_argument("--runs", metavar="DIR", help="evaluate on the one-shot runs format instead of DATA")
    q.add_argument("--way", type=int, default=20, help="classes per episode (default: 20)")
    q.add_argument("--shot", type=int, default=1, help="support images per class (default: 1)")
    q.add_argument("--queries", type=int, default=1, help="query images per class and episode (default: 1)")
    q.add_argument("--episodes", type=int, default=400, help="number of episodes (default: 400)")
    q.add_argument("--seed", type=int, default=0, help="seed of the episodes (default: 0)")
    q.add_argument("--center", action=argparse.BooleanOptionalAction, default=None,
                   help="re-centre the embeddings on each episode's support set (each run's training images) before "
                        "comparing them (default: as the model was saved by `fit --center/--no-center`)")
    q.add_argument("--align-views", action=argparse.BooleanOptionalAction, default=None,
                   help="score a query against a candidate by their best-aligned test-time-augmentation views instead "
                        "of their mean embeddings (default: as the model was saved by `fit --align-views`)")
    q.add_argument("--local-match", type=float, default=None, metavar="W",
                   help="weight of the local-feature match (each cell of the query's last feature map to its best "
                        "cell of the candidate's) added to the embedding score; 0: off (default: as the model was "
                        "saved by `fit --local-match`)")
    q.add_argument("--json", action="store_true", help='print {"accuracy": ..., "ci95": ..., "episodes": ...} as JSON')
    q.set_defaults(func=run_eval)

    q = group.add_parser(
        "calibrate",
        help="pick the verification threshold from same/different pairs and store it in the model",
        description="Embed DATA (class folders or Omniglot), draw balanced same-class and different-class pairs "
        "(from the classes the model has not seen, when there are at least two), and choose the distance threshold "
        "at the equal error rate (default) or at a target false-accept rate (--far). The threshold is stored in the "
        "model's config.json; the run folder gets calibration_hist.png and calibration_roc.png.",
    )
    q.add_argument("run", metavar="RUN_DIR", help="run folder (or model directory) from `siamese fit`")
    q.add_argument("data", metavar="DATA", help="held-out labelled images: class folders or Omniglot")
    q.add_argument("--far", type=float, default=None, metavar="RATE",
                   help="choose the largest threshold with at most this false-accept rate, e.g. 0.01 (default: EER)")
    q.add_argument("--pairs", type=int, default=2000, help="same-class pairs to draw, and as many different ones (default: 2000)")
    q.add_argument("--seed", type=int, default=0, help="seed of the pairs (default: 0)")
    q.add_argument("--json", action="store_true", help="print the calibration record as JSON")
    q.set_defaults(func=run_calibrate)

    q = group.add_parser(
        "verify",
        help="match images against a gallery of known identities",
        description="For each IMAGE print the best-matching gallery identity, its distance, and the decision "
        "(match / no match) under the model's calibrated threshold. The gallery is a folder with one subfolder per "
        "identity, or a folder of images named after their identity.",
        epilog="Example: transferkit siamese verify run --gallery staff/ visitor1.jpg visitors/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    q.add_argument("run", metavar="RUN_DIR", help="run folder (or model directory) from `siamese fit`")
    q.add_argument("images", nargs="+", metavar="IMAGE", help="image files, folders or glob patterns to verify")
    q.add_argument("--gallery", required=True, metavar="DIR", help="known identities: DIR/identity/*.png or DIR/identity.png")
    q.add_argument("--threshold", type=float, default=None, help="distance threshold (default: the calibrated one)")
    q.add_argument("--json", action="store_true",
                   help='one JSON object per image: {"path", "identity", "distance", "match", "threshold"}')
    q.set_defaults(func=run_verify)

    q = group.add_parser(
        "make-runs",
        help="write one-shot runs (Lake et al.'s format) from labelled images",
        description="Write N-way one-shot runs from DATA: each run takes N classes (within one alphabet when it has "
        "enough), one training image per class from one drawer and one test image from another. With --exclude "
        "RUN_DIR, the classes (and Omniglot alphabets) that model was trained on are left out.",
    )
    q.add_argument("data", metavar="DATA", help="class folders or Omniglot (folder or .zip)")
    q.add_argument("out", metavar="OUT_DIR", help="folder to write run01/, run02/, ... into (must be new or empty)")
    q.add_argument("--runs", type=int, default=20, help="number of runs (default: 20)")
    q.add_argument("--way", type=int, default=20, help="classes per run (default: 20)")
    q.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    q.add_argument("--exclude", metavar="RUN_DIR", help="leave out the classes a trained model has seen")
    q.set_defaults(func=run_make_runs)
    p.set_defaults(func=lambda args: _usage(p))


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_help()
    return 2


def run_fit(args: argparse.Namespace) -> int:
    from transferkit.cli._fit import resolve_fit_config
    from transferkit.tasks.siamese.config import SiameseConfig
    from transferkit.tasks.siamese.train import fit

    cfg = resolve_fit_config(SiameseConfig, args, required_by="siamese fit")
    run = fit(cfg, args.data, args.out, resume=args.resume)
    if not is_rank_zero():
        return 0  # DDP: another rank trained alongside; rank 0 reports
    print(run)
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from transferkit.errors import TransferkitError
    from transferkit.tasks.siamese.oneshot import evaluate, evaluate_runs

    if args.runs:
        if args.data:
            raise TransferkitError("Give either DATA or --runs DIR, not both.")
        res = evaluate_runs(args.run, args.runs, center=args.center, align=args.align_views, local=args.local_match)
        if args.json:
            print(json.dumps(res))
            return 0
        for r in res["runs"]:
            print(f"{r['run']}: {r['accuracy']:.1%} ({r['n']} test images)")
        print(f"overall: {res['accuracy']:.2%} +- {res['ci95']:.2%} (95% CI over {res['episodes']} runs)")
        return 0
    if not args.data:
        raise TransferkitError("Give DATA to draw episodes from, or --runs DIR.")
    res = evaluate(args.run, args.data, way=args.way, shot=args.shot, episodes=args.episodes, queries=args.queries,
                   seed=args.seed, center=args.center, align=args.align_views, local=args.local_match)
    if args.json:
        print(json.dumps(res))
        return 0
    where = f" ({', '.join(res['alphabets'])})" if res.get("alphabets") else ""
    excluded = f"; excluded {res['excluded_classes']} seen classes" if res["excluded_classes"] else ""
    if res.get("excluded_alphabets"):
        excluded += f" incl. alphabets {', '.join(res['excluded_alphabets'])}"
    print(f"{res['way']}-way {res['shot']}-shot accuracy: {res['accuracy']:.2%} +- {res['ci95']:.2%} "
          f"(95% CI, {res['episodes']} episodes over {res['classes']} unseen classes{where}{excluded})")
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    from transferkit.tasks.siamese.oneshot import calibrate

    rec = calibrate(args.run, args.data, target_far=args.far, pairs=args.pairs, seed=args.seed)
    if args.json:
        print(json.dumps(rec))
        return 0
    how = "equal error rate" if rec["method"] == "eer" else f"target false-accept rate {rec['target_far']:.2%}"
    print(f"threshold {rec['threshold']:.4g} ({how}) from {rec['same_pairs']} same / {rec['different_pairs']} different "
          f"pairs of {rec['classes']} classes: FAR {rec['far']:.2%}, FRR {rec['frr']:.2%}, EER {rec['eer']:.2%}, "
          f"ROC AUC {rec['auc']:.4f}; stored in the model")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from transferkit.tasks.siamese.oneshot import verify

    results = verify(args.run, args.gallery, args.images, threshold=args.threshold)
    out = sys.stdout
    for r in results:
        if args.json:
            out.write(json.dumps(r) + "\n")
        else:
            out.write(f"{r['path']}\t{r['identity']}\t{r['distance']:.4f}\t{'match' if r['match'] else 'no match'}\n")
    out.flush()
    return 0


def run_make_runs(args: argparse.Namespace) -> int:
    from pathlib import Path

    from transferkit.errors import TransferkitError
    from transferkit.tasks.siamese.data import load_image_set
    from transferkit.tasks.siamese.episodes import write_runs

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TransferkitError(f"{out} already exists and is not empty; choose a new folder.")
    # the drawings as they are, at Omniglot's own size (Lake's runs are 105x105); other images are squashed to it
    ds = load_image_set(args.data, 105, ink=False)
    pool = list(range(len(ds.classes)))
    if args.exclude:
        from transferkit.tasks.siamese.oneshot import load_siamese, seen_filter

        pool, _ = seen_filter(load_siamese(args.exclude), ds)
    dirs = write_runs(ds.images, ds.labels, ds.classes, out, n_runs=args.runs, way=args.way, seed=args.seed,
                      groups=[ds.group_of(c) for c in ds.classes], pool=pool)
    print(f"wrote {len(dirs)} runs of {args.way}-way one-shot to {out}")
    return 0

