"""CPU training precision: fp32 against bf16-mixed at equal steps, on four real jobs, in one run.

    python benchmarks/cpu_precision.py --work .bench/precision [--shared ../shared/data] [--json FILE]

For each job the same command is run twice, with ``--precision 32`` and with
``--precision bf16`` (everything else fixed: seed, epochs, steps per epoch),
then the run is evaluated on data it never saw:

* classify: ``--strategy finetune`` on ants/bees (a seeded 20% hold-out is cut
  off first), hold-out accuracy;
* autoencoder: conv autoencoder on the MNIST test IDX files, held-out MSE;
* siamese: Koch-style small CNN trained on Omniglot small1, 20-way one-shot
  accuracy on the unseen alphabets of small2 (and training steps per second);
* seq2seq: English->French on a slice of the Tatoeba pairs, held-out chrF.

Printed per job: wall seconds and CPU seconds of the fit (CPU seconds are
what the process consumed; on a shared host they move less than wall time),
the bf16/fp32 ratio of each, and the result of each side.  `--precision auto`
on a CPU follows this table (``core/engine.py``): bf16 only where it is
measurably faster at equal accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def transferkit() -> list[str]:
    script = Path(sys.executable).with_name("transferkit")
    return [str(script)] if script.exists() else [sys.executable, "-m", "transferkit"]


def timed(args: list[str], log: Path) -> tuple[float, float]:
    """Run ``transferkit ARGS``; (wall seconds, CPU seconds of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run([*transferkit(), *args], stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"transferkit {' '.join(args)} failed ({proc.returncode}); see {log}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def json_of(args: list[str]) -> dict:
    out = subprocess.run([*transferkit(), *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"transferkit {' '.join(args)} failed: {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_description() -> dict:
    """CPU model and the flags that decide bf16 speed (AVX-512, AVX512-BF16, AMX)."""
    model, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ["avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile"]
    from transferkit.core.inference import cpu_supports_bf16

    return {"model": model, "cores": os.cpu_count(), "flags": [f for f in wanted if f in flags],
            "onednn_native_bf16": cpu_supports_bf16()}


def classify_holdout(shared: Path, work: Path) -> tuple[Path, Path]:
    """Symlink a seeded, stratified 80/20 split of ants/bees into work/train and work/holdout."""
    from transferkit.core.datasets import scan_class_folders, stratified_split

    files = scan_class_folders(shared / "hymenoptera" / "train")
    tr, ho = stratified_split(files.labels, 0.2, 0)
    for name, idx in (("train", tr), ("holdout", ho)):
        for i in idx:
            src = Path(files.paths[i])
            dst = work / name / src.parent.name / src.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not dst.exists():
                dst.symlink_to(src.resolve())
    return work / "train", work / "holdout"


def seq2seq_split(shared: Path, work: Path, n: int) -> tuple[Path, Path]:
    from transferkit.core.datasets import read_pairs
    from transferkit.tasks.seq2seq.data import split_pairs

    pairs = read_pairs(shared / "tatoeba-fra-eng" / "eng-fra.tsv").pairs[:n]
    keep, test = split_pairs(pairs, 0.1, seed=0, salt="test")
    out = []
    for name, idx in (("s2s_train.tsv", keep), ("s2s_test.tsv", test)):
        p = work / name
        p.write_text("".join(f"{pairs[i][0]}\t{pairs[i][1]}\n" for i in sorted(idx)), encoding="utf-8")
        out.append(p)
    return out[0], out[1]


def jobs(shared: Path, work: Path, scale: float) -> list[dict]:
    """Each job: fit arguments (without --out/--precision), and how to score the run."""
    train, holdout = classify_holdout(shared, work / "ants_bees")
    s2s_train, s2s_test = seq2seq_split(shared, work, int(8000 * scale))
    ep = max(1, round(3 * scale))
    return [
        dict(name="classify finetune (ants/bees)",
             fit=["classify", "fit", str(train), "--strategy", "finetune", "--epochs", str(ep), "--seed", "0"],
             score=lambda run: {"holdout_acc": json_of(["classify", "eval", str(run), str(holdout), "--json"])["accuracy"]}),
        dict(name="autoencoder conv (MNIST)",
             fit=["autoencoder", "fit", str(shared / "mnist"), "--kind", "conv", "--epochs", str(ep), "--seed", "0"],
             score=lambda run: {"heldout_mse": json_of(["autoencoder", "eval", str(run), str(shared / "mnist"), "--json"])["mse"]}),
        dict(name="siamese small-cnn (Omniglot)",
             fit=["siamese", "fit", str(shared / "omniglot" / "images_background_small1.zip"), "--epochs", str(ep),
                  "--steps-per-epoch", str(max(10, int(100 * scale))), "--seed", "0"],
             steps=ep * max(10, int(100 * scale)),
             score=lambda run: {"oneshot20_acc": json_of(["siamese", "eval", str(run),
                                                           str(shared / "omniglot" / "images_background_small2.zip"),
                                                           "--way", "20", "--episodes", "100", "--json"])["accuracy"]}),
        dict(name="seq2seq LSTM (eng-fra)",
             fit=["seq2seq", "fit", str(s2s_train), "--epochs", str(ep), "--seed", "0", "--time-limit", "none"],
             score=lambda run: {"heldout_chrf": json_of(["seq2seq", "eval", str(run), str(s2s_test), "--json",
                                                         "--no-report"])["chrf"]}),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="empty folder for splits and runs")
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data", help="the shared data folder")
    ap.add_argument("--scale", type=float, default=1.0, help="shrink every job (epochs, steps, pairs) for a smoke run")
    ap.add_argument("--only", default="", help="comma list of job name prefixes to run (default: all)")
    ap.add_argument("--json", type=Path, default=None, help="save the results here")
    ns = ap.parse_args()
    ns.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TRANSFERKIT_PROGRESS", "0")
    cpu = cpu_description()
    print(f"CPU: {cpu['model']}, {cpu['cores']} cores, flags {' '.join(cpu['flags'])}, "
          f"oneDNN native bf16: {cpu['onednn_native_bf16']}", flush=True)
    results = []
    only = [p for p in ns.only.split(",") if p]
    for job in jobs(ns.shared, ns.work, ns.scale):
        if only and not any(job["name"].startswith(p) for p in only):
            continue
        row = {"job": job["name"]}
        for prec in ("32", "bf16"):
            run = ns.work / f"{job['name'].split()[0]}-{prec}"
            shutil.rmtree(run, ignore_errors=True)
            wall, cpu_s = timed([*job["fit"], "--out", str(run), "--precision", prec], ns.work / f"{run.name}.log")
            row[prec] = {"wall_s": round(wall, 1), "cpu_s": round(cpu_s, 1), **job["score"](run)}
            if "steps" in job:
                row[prec]["steps_per_s"] = round(job["steps"] / wall, 2)
            print(f"  {job['name']} --precision {prec}: {row[prec]}", flush=True)
        row["bf16_over_fp32_wall"] = round(row["bf16"]["wall_s"] / row["32"]["wall_s"], 2)
        row["bf16_over_fp32_cpu"] = round(row["bf16"]["cpu_s"] / row["32"]["cpu_s"], 2)
        print(f"{job['name']}: bf16/fp32 wall {row['bf16_over_fp32_wall']}x, CPU {row['bf16_over_fp32_cpu']}x", flush=True)
        results.append(row)
    if ns.json:
        ns.json.write_text(json.dumps({"cpu": cpu, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
