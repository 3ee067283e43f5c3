"""``arch list | summary | compare``: the project's architecture families, their layer tables, side-by-side training."""

from __future__ import annotations

import argparse
import json
import sys

from transferkit.core.engine import is_rank_zero

ORDER = 70

NAME_RULE = (
    "NAME is a transferkit architecture (`transferkit arch list`) or any timm model; where both have the name "
    "(resnet18, resnet34, resnet50...) transferkit's from-scratch one is meant, and timm/NAME or --timm asks for timm's."
)


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser(
        "arch",
        help="architecture families: layer summaries and side-by-side training from scratch",
        description="Residual and plain networks, Inception modules (naive and reduced), VGG and LeNet-5: "
        "list them, print a layer table with output shapes, parameters and MACs, or train several side by side. "
        + NAME_RULE,
    )
    cmds = group.add_subparsers(dest="arch_command", metavar="COMMAND")

    p = cmds.add_parser("list", help="list the registered architectures and their options",
                        description="List every registered from-scratch architecture, its family, default input and options.")
    p.add_argument("--json", action="store_true", help="one JSON object per architecture")
    p.set_defaults(func=run_list)

    p = cmds.add_parser(
        "summary",
        help="layer table: output shapes, parameters and MACs per layer and in total",
        description="Print a layer table (like Keras' model.summary()): output shape, parameters and "
        "multiply-accumulates of each layer, and the totals, measured on one forward pass of one sample. "
        + NAME_RULE,
    )
    p.add_argument("name", metavar="NAME", help="architecture name (timm/NAME for timm's)")
    p.add_argument("--input", metavar="C,H,W", help="input shape of one sample (default: the architecture's default "
                   "input for transferkit's, timm's pretrained input size for timm's)")
    p.add_argument("--num-classes", type=int, metavar="K", help="classifier outputs (default: the architecture's; 0: no classifier)")
    p.add_argument("--timm", action="store_true", help="take NAME from timm even where transferkit has that name")
    p.add_argument("--arch-args", metavar="LIST", help="architecture options KEY=VALUE,... (e.g. width=16,stem=small)")
    p.add_argument("--depth", type=int, metavar="N", help="fold layers deeper than N into their parent (default: every layer)")
    p.add_argument("--json", action="store_true", help="print the table and totals as JSON")
    p.set_defaults(func=run_summary)

    p = cmds.add_parser(
        "compare",
        help="train several networks from scratch on the same data and compare them",
        description="Train each NAME from scratch with the same data, seed, split and schedule, then write "
        "OUT/report.html: training and validation curves of all of them on one plot, a table of final accuracy, "
        "parameters, MACs and time per epoch, and the gradient norm per depth at the start of training. "
        "The degradation experiment of He et al.: `transferkit arch compare plain18 plain34 resnet18 resnet34 "
        "--data DATA --epochs N --out DIR`. " + NAME_RULE,
    )
    p.add_argument("names", nargs="+", metavar="NAME", help="architectures to train")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder (refuses to overwrite one unless --resume)")
    p.add_argument("--resume", action="store_true", help="continue the run in DIR: keep finished networks, resume the others")
    from transferkit.core.config import add_config_args
    from transferkit.tasks.arch.compare import CompareConfig

    add_config_args(p, CompareConfig, exclude=("workers",))  # images live in memory: no loader workers
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run_compare)


def run_list(args: argparse.Namespace) -> int:
    from transferkit.core.registry import list_archs
    from transferkit.tasks.arch import ArchRef, arch_options

    entries = sorted(list_archs().values(), key=lambda e: (e.family, e.name))
    for e in entries:
        opts = arch_options(ArchRef(e.name, "transferkit"))
        if args.json:
            print(json.dumps({"name": e.name, "family": e.family, "default_input": list(e.default_input),
                              "options": sorted(opts), "description": e.description}))
            continue
        inp = "x".join(map(str, e.default_input))
        print(f"{e.name:<24} {e.family:<10} {inp:<9} {e.description}")
        if opts:
            print(f"{'':<24} {'':<10} {'':<9} options: {', '.join(sorted(opts))}")
    if not args.json:
        print("\nAny timm model works too (timm/NAME for timm's where transferkit has the same name).")
    return 0


def run_summary(args: argparse.Namespace) -> int:
    from transferkit.tasks.arch import create_network, default_input, parse_arch_args, resolve_arch, typed_options
    from transferkit.tasks.arch.summary import parse_input, summarize

    ref = resolve_arch(args.name, prefer_timm=args.timm)
    if args.num_classes is not None and args.num_classes < 0:
        from transferkit.errors import TransferkitError

        raise TransferkitError("--num-classes must be 0 or more.")
    raw = parse_arch_args(args.arch_args)
    if raw and ref.source == "timm":
        from transferkit.errors import TransferkitError

        raise TransferkitError("--arch-args applies to transferkit's architectures only.")
    shape = parse_input(args.input) if args.input else default_input(ref)
    net = create_network(ref, num_classes=args.num_classes, in_chans=shape[0], options=typed_options(ref, raw))
    s = summarize(net, shape, depth=args.depth, name=ref.label)
    if args.json:
        print(json.dumps({"name": ref.label, "source": ref.source, **s.to_dict()}))
    else:
        print(s.table())
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from transferkit.core.config import resolve
    from transferkit.tasks.arch.compare import TABLE_HEADERS, CompareConfig, compare, table_rows

    if args.resume and not args.config and (Path(args.out) / "config.yaml").is_file():
        args.config = str(Path(args.out) / "config.yaml")
    cfg = resolve(CompareConfig, args, names=tuple(args.names))
    summary = compare(cfg, args.out, resume=args.resume)
    if not is_rank_zero():
        return 0  # DDP: another rank trained alongside; rank 0 reports
    if args.json:
        slim = [{k: v for k, v in r.items() if k not in ("curves", "grad_layers")} for r in summary["networks"]]
        print(json.dumps({**summary, "networks": slim}))
        return 0
    rows = [[str(c) if not isinstance(c, float) else f"{c:.4g}" for c in r] for r in table_rows(summary["networks"])]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(TABLE_HEADERS)]
    out = sys.stdout
    out.write("  ".join(h.ljust(w) for h, w in zip(TABLE_HEADERS, widths)) + "\n")
    for r in rows:
        out.write("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) + "\n")
    out.write(f"report: {Path(args.out) / 'report.html'}\n")
    return 0
