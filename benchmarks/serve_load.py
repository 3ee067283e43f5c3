"""`transferkit serve` under load: batched vs unbatched, against the offline `predict` speed, in one run.

Saves EfficientNet-Lite0 (bundled ImageNet weights) as a model directory,
measures the offline images/s of ``transferkit predict``'s loop on the photos
(engine set-up excluded), then for ``--max-batch 32`` and ``--max-batch 1`` starts ``transferkit
serve`` on loopback and runs, for each client count, that many concurrent
clients (asyncio + httpx, keep-alive) posting the real photos (multipart, in a
fixed cycle) for ``--duration`` seconds each.  Reports requests/s, latency
p50/p95/p99, errors, and the mean batch size the server ran (its ``/stats``).
Clients and server share the machine's cores, as they would on one host.

    python benchmarks/serve_load.py ../shared/data/hymenoptera/train --clients 1,8,32 --duration 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: Path, max_batch: int, port: int) -> subprocess.Popen:
    import httpx

    cmd = [sys.executable, "-m", "transferkit", "serve", f"lite0={model_dir}", "--port", str(port),
           "--max-batch", str(max_batch)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while time.time() - t0 < 180:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read()}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("server did not start")


async def load(url: str, photos: list[tuple[str, bytes]], clients: int, duration: float) -> dict:
    """``clients`` concurrent posters for ``duration`` s: latencies of the requests that finished in time."""
    import httpx

    lat: list[float] = []
    errors = 0
    stop = time.perf_counter() + duration
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(k: int, http: httpx.AsyncClient):
        nonlocal errors
        i = k
        while time.perf_counter() < stop:
            name, data = photos[i % len(photos)]
            i += clients
            t = time.perf_counter()
            try:
                r = await http.post(url, files={"file": (name, data, "image/jpeg")}, params={"top_k": 5})
                ok = r.status_code == 200 and len(r.json()) == 1
            except httpx.HTTPError:
                ok = False
            if ok:
                lat.append(time.perf_counter() - t)
            else:
                errors += 1

    t0 = time.perf_counter()
    async with httpx.AsyncClient(limits=limits, timeout=60) as http:
        await asyncio.gather(*(client(k, http) for k in range(clients)))
    wall = time.perf_counter() - t0
    arr = np.asarray(lat) * 1000 if lat else np.zeros(1)
    return {"clients": clients, "requests": len(lat), "errors": errors, "seconds": round(wall, 1),
            "req_per_s": round(len(lat) / wall, 2), "p50_ms": round(float(np.percentile(arr, 50)), 1),
            "p95_ms": round(float(np.percentile(arr, 95)), 1), "p99_ms": round(float(np.percentile(arr, 99)), 1)}


def offline_speed(model_dir: Path, paths: list[Path]) -> float:
    """Steady-state images/s of `transferkit predict`'s own loop on the photos: decoding in DataLoader workers,
    batches of 32 through the same engine (ONNX Runtime), engine set-up excluded (second pass timed)."""
    import transferkit
    from transferkit.core.images import SkipLog
    from transferkit.core.inference import OutputHead, Runner, draft_for, iter_batches

    tm = transferkit.load(model_dir)
    pre = tm.preprocessing
    runner = Runner(OutputHead.make(tm.module, "probs"), pre.input_size)

    def one_pass() -> float:
        t = time.perf_counter()
        for _, batch in iter_batches(paths, tm.transform(), 32, None, SkipLog(), draft_for(pre)):
            runner(batch)
        return time.perf_counter() - t

    one_pass()
    return len(paths) / one_pass()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("photos", help="folder of photos (searched recursively)")
    ap.add_argument("--clients", default="1,8,32", help="concurrent client counts (default: 1,8,32)")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds per client count and mode (default: 30)")
    ap.add_argument("--max-photos", type=int, default=128, help="photos cycled through (default: 128)")
    ap.add_argument("--out", help="also write the results as JSON here")
    args = ap.parse_args()
    os.environ.setdefault("TRANSFERKIT_PROGRESS", "0")

    import httpx

    import transferkit
    from transferkit.core.images import list_images

    paths = list_images([args.photos])[: args.max_photos]
    photos = [(p.name, p.read_bytes()) for p in paths]
    counts = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = transferkit.load("efficientnet_lite0").save(Path(tmp) / "lite0")
        offline = offline_speed(model_dir, paths)
        print(f"offline `transferkit predict`: {offline:.1f} images/s on {len(paths)} photos", flush=True)
        rows = []
        for max_batch in (32, 1):
            port = free_port()
            proc = start_server(model_dir, max_batch, port)
            try:
                url = f"http://127.0.0.1:{port}/models/lite0/predict"
                asyncio.run(load(url, photos[:8], 2, 3.0))  # warm-up, not counted
                for n in counts:
                    before = httpx.get(f"http://127.0.0.1:{port}/stats").json()["lite0"]
                    res = asyncio.run(load(url, photos, n, args.duration))
                    after = httpx.get(f"http://127.0.0.1:{port}/stats").json()["lite0"]
                    batches = {int(k): v - before.get(k, 0) for k, v in after.items()}
                    n_b = sum(batches.values())
                    res.update(max_batch=max_batch, mean_batch=round(sum(k * v for k, v in batches.items()) / max(n_b, 1), 2),
                               vs_offline=round(res["req_per_s"] / offline, 2))
                    rows.append(res)
                    print(json.dumps(res), flush=True)
            finally:
                proc.terminate()
                proc.wait(30)
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"transferkit {transferkit.__version__}; offline predict {offline:.1f} images/s")
    print("| clients | max-batch | req/s | p50 ms | p95 ms | p99 ms | errors | mean batch | vs offline |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['clients']} | {r['max_batch']} | {r['req_per_s']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | "
              f"{r['errors']} | {r['mean_batch']} | {r['vs_offline']}x |")
    for n in counts:
        b = next(r for r in rows if r["clients"] == n and r["max_batch"] == 32)
        u = next(r for r in rows if r["clients"] == n and r["max_batch"] == 1)
        print(f"{n} clients: batched / unbatched requests/s = {b['req_per_s'] / max(u['req_per_s'], 1e-9):.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps({"offline_images_per_s": offline, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
