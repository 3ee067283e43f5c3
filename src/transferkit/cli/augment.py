"""``augment preview``: a picture of what the augmentation settings do to your images."""

from __future__ import annotations

import argparse

ORDER = 25


def register(sub: argparse._SubParsersAction) -> None:
    from transferkit.core.augment import AugmentConfig
    from transferkit.core.config import add_config_args

    p = sub.add_parser(
        "augment",
        help="preview data augmentation on your images",
        description="Tools for the augmentation pipelines that training commands use.",
    )
    group = p.add_subparsers(dest="augment_command", metavar="SUBCOMMAND")
    q = group.add_parser(
        "preview",
        help="draw a grid of augmented samples",
        description="Draw a grid: one row per image, its plain resize first, then random augmented versions. "
        "Takes the same augmentation flags (or --config YAML) as `classify fit`.",
    )
    q.add_argument("data", metavar="DATA", nargs="+", help="image files, folders (searched recursively) or globs")
    q.add_argument("--out", required=True, metavar="FILE.png", help="where to write the grid (PNG)")
    q.add_argument("--images", type=int, default=6, help="how many images (rows) to show (default: 6)")
    q.add_argument("--per-image", type=int, default=7, help="augmented versions per image (default: 7)")
    q.add_argument("--size", type=int, default=224, help="output size in pixels (default: 224)")
    q.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    add_config_args(q, AugmentConfig)
    q.set_defaults(func=run_preview)
    p.set_defaults(func=lambda args: _usage(p))


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_help()
    return 2


def run_preview(args: argparse.Namespace) -> int:
    import random
    from pathlib import Path

    from transferkit.core import config as C
    from transferkit.core.augment import AugmentConfig, describe, preview_grid
    from transferkit.core.images import SkipLog, list_images, read_many
    from transferkit.core.modeldir import atomic_write_bytes
    from transferkit.errors import TransferkitError

    if args.images < 1 or args.per_image < 1 or args.size < 8:
        raise TransferkitError("--images and --per-image must be at least 1, and --size at least 8.")
    cfg = C.resolve(AugmentConfig, args)
    cfg.validate_augment()
    paths = list_images(args.data)
    rng = random.Random(args.seed)
    chosen = sorted(rng.sample(range(len(paths)), min(args.images, len(paths))))
    skips = SkipLog()
    pairs = read_many([paths[i] for i in chosen], skips)
    if not pairs:
        raise TransferkitError("None of the chosen images could be read.")
    titles = [p.name for p, _ in pairs]
    fig = preview_grid([img for _, img in pairs], cfg, args.size, args.per_image, args.seed, titles)
    import io

    from transferkit.core.report import plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt().close(fig)
    out = Path(args.out)
    atomic_write_bytes(out, buf.getvalue())
    print(f"wrote {out} ({len(pairs)} images x {args.per_image} augmented versions: {', '.join(describe(cfg))})")
    return 0
