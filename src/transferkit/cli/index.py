"""``index build|search|duplicates``: cosine-similarity search over image embeddings."""

from __future__ import annotations

import argparse
import json
import sys

ORDER = 42


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser(
        "index",
        help="similarity search: build an embedding index, find nearest images and near-duplicates",
        description="Store L2-normalised embeddings of images (a pretrained backbone's features, or an autoencoder's "
        "codes) and search them by cosine similarity: exact with NumPy for small collections, faiss HNSW above "
        "--ann-threshold items.",
    )
    cmds = group.add_subparsers(dest="index_command", metavar="COMMAND")
    group.set_defaults(func=lambda a: group.print_help() or 2)

    p = cmds.add_parser(
        "build",
        help="embed images and save an index folder",
        description="Embed DATA and save the index. Examples: `transferkit index build photos/ --out photos.index`; "
        "`transferkit index build digits --out digits.index --model runs/ae`.",
    )
    p.add_argument("data", nargs="+", metavar="DATA",
                   help="image files, folders (recursive) or globs; or 'digits' / an MNIST IDX folder")
    p.add_argument("--out", required=True, metavar="INDEX", help="index folder to write")
    p.add_argument("--model", default="efficientnet_lite0",
                   help="pretrained backbone name, or an autoencoder run directory (default: efficientnet_lite0)")
    p.add_argument("--backend", choices=("auto", "numpy", "faiss"), default="auto",
                   help="search backend; auto = exact NumPy below --ann-threshold items, faiss HNSW above")
    p.add_argument("--ann-threshold", type=int, default=None, help="items from which auto picks faiss (default: 50000)")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (default: 32)")
    p.add_argument("--engine", default="auto", choices=("auto", "onnx", "torch", "eager"),
                   help="inference engine: auto = ONNX Runtime on CPU")
    p.add_argument("--strict", action="store_true", help="fail on the first unreadable image instead of skipping it")
    p.set_defaults(func=run_build)

    p = cmds.add_parser(
        "search",
        help="nearest indexed images of an image, by cosine similarity",
        description="Print the k nearest indexed images of each query (an image file, or an item name of the index "
        "such as digits:17), most similar first; --grid draws them.",
    )
    p.add_argument("index", metavar="INDEX", help="index folder from `index build`")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="query image file(s) or indexed item names")
    p.add_argument("-k", type=int, default=5, help="neighbours per query (default: 5)")
    p.add_argument("--skip-self", action="store_true", help="leave out the query itself when it is indexed")
    p.add_argument("--grid", metavar="FILE.png", help="draw each query and its neighbours to this PNG")
    p.add_argument("--json", action="store_true", help='one JSON object per query: {"query", "hits": [{"rank", "name", "similarity"}]}')
    p.set_defaults(func=run_search)

    p = cmds.add_parser(
        "duplicates",
        help="list near-duplicate pairs above a cosine similarity",
        description="List pairs of indexed images whose cosine similarity is at least --threshold, most similar first.",
    )
    p.add_argument("index", metavar="INDEX", help="index folder from `index build`")
    p.add_argument("--threshold", type=float, default=0.95, help="minimum cosine similarity (default: 0.95)")
    p.add_argument("--json", action="store_true", help='one JSON object per pair: {"a", "b", "similarity"}')
    p.set_defaults(func=run_duplicates)


def run_build(args: argparse.Namespace) -> int:
    from transferkit.tasks.index import ANN_THRESHOLD, build

    index = build(args.data, args.out, model=args.model, backend=args.backend,
                  ann_threshold=args.ann_threshold or ANN_THRESHOLD, batch_size=args.batch_size, engine=args.engine,
                  strict=args.strict)
    skipped = index.meta.get("skipped") or []
    print(f"indexed {len(index)} images ({index.embeddings.shape[1]}-d {index.meta['model_kind']} embeddings, "
          f"{index.meta['backend']} search) in {args.out}" + (f"; {len(skipped)} unreadable skipped" if skipped else ""))
    return 0


def run_search(args: argparse.Namespace) -> int:
    from transferkit.tasks.index import search
    from transferkit.tasks.index.ops import display_name, draw

    results = search(args.index, args.images, k=args.k, skip_self=args.skip_self)
    out = sys.stdout
    for r in results:
        if args.json:
            out.write(json.dumps(r, ensure_ascii=False) + "\n")
            continue
        out.write(f"{display_name(r['query'])}\n")
        for h in r["hits"]:
            label = f"  [{h['label']}]" if "label" in h else ""
            out.write(f"  {h['rank']:>3}. {h['similarity']:.4f}  {display_name(h['name'])}{label}\n")
    out.flush()
    if args.grid:
        path = draw(args.index, results, args.grid)
        print(f"wrote {path}", file=sys.stderr)
    return 0


def run_duplicates(args: argparse.Namespace) -> int:
    from transferkit.tasks.index import duplicates
    from transferkit.tasks.index.ops import display_name

    pairs = duplicates(args.index, args.threshold)
    for p in pairs:
        if args.json:
            print(json.dumps(p, ensure_ascii=False))
        else:
            print(f"{p['similarity']:.4f}  {display_name(p['a'])}  {display_name(p['b'])}")
    print(f"{len(pairs)} pair{'s' if len(pairs) != 1 else ''} with cosine similarity >= {args.threshold:g}", file=sys.stderr)
    return 0
