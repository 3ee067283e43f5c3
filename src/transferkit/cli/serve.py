"""``serve``: a JSON API and a web page over model directories."""

from __future__ import annotations

import argparse
import os

ORDER = 90


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve model directories: a JSON API and a web page (local by default)",
        description="Serve one or more model or run directories of any servable task, each under its folder's name "
        "(or NAME=DIR): GET / (a page to try them), GET /health, GET /models, POST /models/NAME/predict (multipart "
        "image in field 'file', or JSON {\"image\": BASE64} / {\"text\": ...}); OpenAPI docs at /docs. Concurrent "
        "requests are batched. Binds 127.0.0.1; another --host needs --token. "
        "Example: `transferkit serve runs/ants --port 8000`.",
    )
    p.add_argument("models", nargs="+", metavar="MODEL_DIR", help="model or run directory, or NAME=DIR")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only); "
                   "any other needs --token")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--max-batch", type=int, default=None,
                   help="largest batch of concurrent requests run together (default: 32 on a GPU, 8 on a CPU, where "
                   "bigger batches gain nothing and cost latency: BENCHMARKS.md; 1 = no batching)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long a batch waits for requests that have arrived and are still being decoded "
                   "(default: 5; a lone request never waits)")
    p.add_argument("--workers", type=int, default=1,
                   help="server processes, each with its own copy of the models (default: 1)")
    p.add_argument("--token", default=None,
                   help="require 'Authorization: Bearer TOKEN' (default: $TRANSFERKIT_SERVE_TOKEN, else none)")
    p.add_argument("--gallery", action="append", default=[], metavar="DIR|NAME=DIR",
                   help="identities for Siamese models to verify against (one folder per identity)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest request body in MB (default: 20; 413 beyond)")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds a request may wait for its answer (503), take to send its body (408), or take to "
                   "send its headers (the connection is closed) (default: 30)")
    p.add_argument("--max-connections", type=int, default=256,
                   help="concurrent connections before new ones get 503 (default: 256)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--engine", default="auto", choices=("auto", "onnx", "torch", "eager"),
                   help="inference engine for image classifiers, as for predict (default: auto)")
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from transferkit.errors import TransferkitError
    from transferkit.serve import check_bind, serve

    token = args.token or os.environ.get("TRANSFERKIT_SERVE_TOKEN") or None
    check_bind(args.host, token)  # before anything heavy loads
    if args.max_batch is None:
        from transferkit.serve.app import default_max_batch

        args.max_batch = default_max_batch(args.device)
    if args.max_batch < 1 or args.workers < 1 or args.max_wait_ms < 0 or args.timeout <= 0 or args.max_upload_mb <= 0:
        raise TransferkitError("--max-batch and --workers must be at least 1; --max-wait-ms, --timeout and "
                               "--max-upload-mb must be positive.")
    if not 0 <= args.port <= 65535:
        raise TransferkitError(f"--port {args.port} is not a port number (0-65535).")
    galleries = {}
    for g in args.gallery:
        name, _, path = g.partition("=") if ("=" in g and not os.path.exists(g)) else ("*", "", g)
        galleries[name] = path
    from transferkit.serve.app import ServeSettings

    settings = ServeSettings(models=list(args.models), max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                             token=token, max_upload_mb=args.max_upload_mb, timeout_s=args.timeout,
                             device=args.device, engine=args.engine, galleries=galleries)
    serve(settings, host=args.host, port=args.port, workers=args.workers, max_connections=args.max_connections)
    return 0
