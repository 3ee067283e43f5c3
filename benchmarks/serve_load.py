"""`transferkit serve` under load: batched vs unbatched, against the offline `predict` speed, in one run.

Saves EfficientNet-Lite0 (bundled ImageNet weights) as a model directory (or
takes ``--model DIR``, e.g. a detector), measures the offline images/s of
``transferkit predict`` on the photos (end to end, and its loop in steady state;
before and after the load runs) and the network alone at batch 1, 8 and 32
(what batching could gain here), then starts two
``transferkit serve`` processes on loopback, ``--max-batch 32`` and ``--max-batch
1``, and for each client count runs that many concurrent clients (asyncio +
httpx, keep-alive) posting the real photos (multipart, in a fixed cycle) for
``--duration`` seconds per server, in ``--slices`` alternating slices so that
load from elsewhere on the machine falls on both sides alike.  Reports requests/s, latency
p50/p95/p99, errors, and the mean batch size the server ran (its ``/stats``).
Clients and server share the machine's cores, as they would on one host.

    python benchmarks/serve_load.py ../shared/data/hymenoptera/train --clients 1,8,32 --duration 30
    python benchmarks/serve_load.py ../shared/data/raccoon/images --model runs/raccoon --duration 15
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

    cmd = [sys.executable, "-m", "transferkit", "serve", f"model={model_dir}", "--port", str(port),
           "--max-batch", str(max_batch)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while time.time() - t0 < 600:  # a busy machine takes minutes to import torch and load the model
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read()}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("server did not start")


async def load(url: str, photos: list[tuple[str, bytes]], clients: int, duration: float) -> tuple[list[float], int, float]:
    """``clients`` concurrent posters for ``duration`` s: (latencies of the answered requests, errors, seconds)."""
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
    return lat, errors, time.perf_counter() - t0


def summary(clients: int, lat: list[float], errors: int, wall: float) -> dict:
    arr = np.asarray(lat) * 1000 if lat else np.zeros(1)
    return {"clients": clients, "requests": len(lat), "errors": errors, "seconds": round(wall, 1),
            "req_per_s": round(len(lat) / wall, 2), "p50_ms": round(float(np.percentile(arr, 50)), 1),
            "p95_ms": round(float(np.percentile(arr, 95)), 1), "p99_ms": round(float(np.percentile(arr, 99)), 1)}


def offline_speed(model_dir: Path, paths: list[Path]) -> tuple[float, float | None]:
    """Images/s offline on the photos: (``transferkit.predict`` end to end, as a user runs it: its DataLoader
    workers and in-memory ONNX export included; the same loop in steady state: engine built once, decoding
    in this thread, batches of 32).  Each timed after a warm-up pass.  For another task (a detector): its
    ``predict`` on the model loaded once, and no steady-state figure."""
    import importlib

    import transferkit
    from transferkit.core.images import SkipLog
    from transferkit.core.inference import OutputHead, Runner, draft_for, iter_batches
    from transferkit.core.modeldir import read_config

    task = read_config(model_dir)["task"]
    if task not in ("pretrained", "classify", "arch"):
        predict = importlib.import_module(f"transferkit.tasks.{task}").predict
        model = transferkit.load(model_dir)  # loaded once, as the server does
        predict(model, paths[:4])
        t = time.perf_counter()
        predict(model, paths)
        return len(paths) / (time.perf_counter() - t), None
    tm = transferkit.load(model_dir)
    transferkit.predict(paths[:8], model=tm)
    t = time.perf_counter()
    transferkit.predict(paths, model=tm)
    end_to_end = len(paths) / (time.perf_counter() - t)
    pre = tm.preprocessing
    runner = Runner(OutputHead.make(tm.module, "probs"), pre.input_size)

    def one_pass() -> float:
        t = time.perf_counter()
        for _, batch in iter_batches(paths, tm.transform(), 32, 0, SkipLog(), draft_for(pre)):
            runner(batch)
        return time.perf_counter() - t

    one_pass()
    return end_to_end, len(paths) / one_pass()


def network_ms_per_image(model_dir: Path, batches=(1, 8, 32), images: int = 64) -> dict[int, float] | None:
    """The network alone (random inputs, the same Runner as predict and serve): ms per image at each batch size,
    which bounds what batching can gain on this machine.  Classifiers only."""
    import torch

    import transferkit
    from transferkit.core.inference import OutputHead, Runner
    from transferkit.core.modeldir import read_config

    if read_config(model_dir)["task"] not in ("pretrained", "classify", "arch"):
        return None
    tm = transferkit.load(model_dir)
    runner = Runner(OutputHead.make(tm.module, "probs"), tm.preprocessing.input_size)
    out = {}
    for rep in range(2):  # the second round is kept (the first warms every shape)
        for b in batches:
            x = torch.randn(b, *tm.preprocessing.input_size)
            runner(x)
            t = time.perf_counter()
            for _ in range(max(1, images // b)):
                runner(x)
            out[b] = round((time.perf_counter() - t) / (max(1, images // b) * b) * 1000, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("photos", help="folder of photos (searched recursively)")
    ap.add_argument("--clients", default="1,8,32", help="concurrent client counts (default: 1,8,32)")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds per client count and mode (default: 30)")
    ap.add_argument("--slices", type=int, default=3,
                    help="each client count alternates the two servers this many times (default: 3)")
    ap.add_argument("--max-photos", type=int, default=128, help="photos cycled through (default: 128)")
    ap.add_argument("--model", metavar="DIR", help="serve this model or run directory instead of EfficientNet-Lite0 "
                    "(e.g. a detector)")
    ap.add_argument("--network-only", action="store_true", help="only measure the network alone by batch size")
    ap.add_argument("--out", help="also write the results as JSON here")
    args = ap.parse_args()
    os.environ.setdefault("TRANSFERKIT_PROGRESS", "0")

    import httpx

    import transferkit
    from transferkit.core.images import list_images

    paths = list_images([args.photos])[: args.max_photos]
    photos = [(p.name, p.read_bytes()) for p in paths]
    counts = [int(c) for c in args.clients.split(",")]
    print(f"load average at the start: {os.getloadavg()[0]:.1f} (other work on the machine slows both sides)", flush=True)
    modes = (32, 1)
    model_name = args.model or "efficientnet_lite0"
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            from transferkit.core.modeldir import find_model_dir

            model_dir = find_model_dir(args.model) or Path(args.model)
        else:
            model_dir = transferkit.load("efficientnet_lite0").save(Path(tmp) / "lite0")
        net = network_ms_per_image(model_dir)
        if net:
            print("network alone, ms per image by batch size: " + ", ".join(f"{b}: {v}" for b, v in net.items()), flush=True)
        if args.network_only:
            return
        offline_runs = [offline_speed(model_dir, paths)]
        print(f"offline on {len(paths)} photos: predict {offline_runs[0][0]:.1f} images/s, "
              f"steady-state loop {offline_runs[0][1] or 0:.1f} images/s", flush=True)
        ports = {m: free_port() for m in modes}
        procs = {}
        try:
            for m in modes:  # both servers up at once; an idle one costs nothing
                procs[m] = start_server(model_dir, m, ports[m])
            urls = {m: f"http://127.0.0.1:{ports[m]}" for m in modes}
            for m in modes:
                asyncio.run(load(f"{urls[m]}/models/model/predict", photos[:8], 2, 3.0))  # warm-up, not counted
            rows = []
            for n in counts:
                acc = {m: ([], 0, 0.0) for m in modes}
                before = {m: httpx.get(f"{urls[m]}/stats").json()["model"] for m in modes}
                for _ in range(args.slices):  # alternate the two servers so drifting load hits both alike
                    for m in modes:
                        lat, err, wall = asyncio.run(load(f"{urls[m]}/models/model/predict", photos, n,
                                                          args.duration / args.slices))
                        a = acc[m]
                        acc[m] = (a[0] + lat, a[1] + err, a[2] + wall)
                for m in modes:
                    after = httpx.get(f"{urls[m]}/stats").json()["model"]
                    batches = {int(k): v - before[m].get(k, 0) for k, v in after.items()}
                    n_b = sum(batches.values())
                    res = summary(n, *acc[m])
                    res.update(max_batch=m, mean_batch=round(sum(k * v for k, v in batches.items()) / max(n_b, 1), 2))
                    rows.append(res)
                    print(json.dumps(res), flush=True)
        finally:
            for proc in procs.values():
                proc.terminate()
                proc.wait(30)
        offline_runs.append(offline_speed(model_dir, paths))
    offline = float(np.mean([o[0] for o in offline_runs]))
    steady = float(np.mean([o[1] for o in offline_runs])) if offline_runs[0][1] else None
    for r in rows:
        r["vs_offline"] = round(r["req_per_s"] / offline, 2)
        r["vs_steady"] = round(r["req_per_s"] / steady, 2) if steady else None
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f} at the end; transferkit {transferkit.__version__}")
    print(f"model {model_name}; offline images/s (before / after the load runs): predict {offline_runs[0][0]:.1f} / "
          f"{offline_runs[1][0]:.1f}, steady-state loop {offline_runs[0][1] or 0:.1f} / {offline_runs[1][1] or 0:.1f}")
    print("| clients | max-batch | req/s | p50 ms | p95 ms | p99 ms | errors | mean batch | vs predict | vs steady loop |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['clients']} | {r['max_batch']} | {r['req_per_s']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | "
              f"{r['errors']} | {r['mean_batch']} | {r['vs_offline']}x | {r['vs_steady'] or '-'}x |")
    for n in counts:
        b = next(r for r in rows if r["clients"] == n and r["max_batch"] == 32)
        u = next(r for r in rows if r["clients"] == n and r["max_batch"] == 1)
        print(f"{n} clients: batched / unbatched requests/s = {b['req_per_s'] / max(u['req_per_s'], 1e-9):.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps({"offline_images_per_s": offline_runs, "network_ms_per_image": net,
                                              "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
