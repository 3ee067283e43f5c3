"""DDP on one CPU machine: two processes (one thread each) against one process with two threads, in one run.

    python benchmarks/ddp_cpu.py --work .bench/ddp [--shared ../shared/data] [--epochs 3] [--json FILE]

Both sides run ``classify fit --strategy finetune`` on a seeded, stratified 80% of the ants/bees photos
(the same split as ``cpu_precision.py``), same seed, same epochs and the same global batch: one process
with ``--batch-size 32`` and ``OMP_NUM_THREADS=2``, against ``--devices 2 --ddp --batch-size 16`` with
``OMP_NUM_THREADS=1`` per process (so the same optimiser steps).  Each run is then scored on the 20% it
never saw (``classify eval``).  Printed: wall seconds of each fit, training images per second
(training images x epochs / wall), the hold-out accuracy, and the DDP/single ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu_precision import classify_holdout, cpu_description, json_of, transferkit  # noqa: E402


def fit(args: list[str], threads: int, log: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TRANSFERKIT_PROGRESS": "lines"}
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run([*transferkit(), *args], stdout=f, stderr=subprocess.STDOUT, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"transferkit {' '.join(args)} failed ({proc.returncode}); see {log}")
    return wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path(".bench/ddp"))
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    train, holdout = classify_holdout(a.shared, a.work / "ants_bees")
    n_train = sum(1 for p in train.rglob("*") if p.is_file() or p.is_symlink())
    base = ["classify", "fit", str(train), "--strategy", "finetune", "--epochs", str(a.epochs), "--seed", "0",
            "--device", "cpu", "--precision", "32"]
    sides = {"1 process x 2 threads": (["--batch-size", "32"], 2),
             "2 DDP processes x 1 thread": (["--batch-size", "16", "--devices", "2", "--ddp"], 1)}
    rows = {}
    for name, (extra, threads) in sides.items():
        run = a.work / name.split()[0]
        shutil.rmtree(run, ignore_errors=True)
        wall = fit([*base, *extra, "--out", str(run)], threads, a.work / f"{name.split()[0]}.log")
        acc = json_of(["classify", "eval", str(run), str(holdout), "--json"])["accuracy"]
        rows[name] = {"wall_s": round(wall, 1), "train_images_per_s": round(n_train * a.epochs / wall, 1),
                      "holdout_acc": round(acc, 4)}
        print(f"{name:28s} wall {wall:7.1f} s  {rows[name]['train_images_per_s']:6.1f} img/s  hold-out acc {acc:.4f}",
              flush=True)
    one, two = rows.values()
    ratio = one["wall_s"] / two["wall_s"]
    print(f"DDP speed-up (single wall / DDP wall): {ratio:.2f}x; hold-out accuracy {two['holdout_acc']:.4f} vs "
          f"{one['holdout_acc']:.4f}")
    result = {"cpu": cpu_description(), "epochs": a.epochs, "n_train": n_train, "sides": rows, "speedup": round(ratio, 3)}
    if a.json:
        a.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
