"""English -> French translation: the Keras example's configuration against transferkit's default, in one run.

    flock /tmp/transferkit-heavy.lock python benchmarks/seq2seq_translate.py \
        ../shared/data/tatoeba-fra-eng/eng-fra.tsv --work /tmp/s2s-bench

A seeded tenth of the source sentences (hash of the sentence, salt "test",
seed 0; every translation of a held-out sentence goes with it) is cut off as
the test set *before* anything is trained; ``fit`` then makes its own
validation split of the rest for early stopping, so the test pairs are never
seen in training or model selection.  A pair's side does not depend on how
many pairs are read, so the Keras configuration's test pairs (from the first
10,000 pairs) are a subset of the full test set, and both configurations are
compared on exactly those pairs.

Every run goes through the installed CLI (``transferkit seq2seq fit`` /
``eval``), exactly as a user would run it:

1. ``keras``: the Keras example (character level, one LSTM layer of 256 units,
   no attention, unidirectional, first 10,000 pairs, batch 64, 25 epochs,
   no dropout, greedy decoding);
2. ``default``: ``transferkit seq2seq fit TRAIN.tsv --out RUN`` with no other
   option, on all pairs (its own 28-minute wall-clock budget);
3. attention ablation (``--ablation-minutes`` each, 0 to skip): the default
   configuration with ``--attention none``, ``dot`` and ``additive`` under the
   same, shorter budget, so they are compared at equal CPU time.

Prints a table (token accuracy under teacher forcing, chrF, BLEU, exact match,
seconds per epoch, wall time) and the chrF ratio default / keras; writes
``results.json`` in the work folder.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

KERAS_FLAGS = [
    "--level", "char", "--cell", "lstm", "--hidden", "256", "--layers", "1", "--attention", "none",
    "--no-bidirectional", "--dropout", "0", "--label-smoothing", "0", "--batch-size", "64", "--lr", "0.001",
    "--epochs", "25", "--patience", "none", "--time-limit", "none", "--beam", "1",
]


def transferkit() -> list[str]:
    script = Path(sys.executable).with_name("transferkit")
    return [str(script)] if script.exists() else [sys.executable, "-m", "transferkit"]


def run(args: list[str], log: Path) -> float:
    """Run ``transferkit ARGS`` (stderr to ``log``); returns wall seconds."""
    t = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run([*transferkit(), *args], stdout=subprocess.PIPE, stderr=f, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"transferkit {' '.join(args)} failed; see {log}")
    (log.with_suffix(".out")).write_text(proc.stdout)
    return time.perf_counter() - t


def evaluate(run_dir: Path, data: Path, beam: int | None = None) -> dict:
    args = ["seq2seq", "eval", str(run_dir), str(data), "--json", "--no-report"]
    if beam is not None:
        args += ["--beam", str(beam)]
    out = subprocess.run([*transferkit(), *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def epoch_stats(run_dir: Path) -> tuple[int, float]:
    """(epochs completed, mean seconds per epoch incl. validation) from metrics.csv."""
    times = {}
    with (run_dir / "metrics.csv").open() as f:
        for row in csv.DictReader(f):
            if row.get("epoch_time"):
                times[int(float(row["epoch"]))] = float(row["epoch_time"])
    return len(times), (sum(times.values()) / len(times) if times else float("nan"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pairs", type=Path, help="eng-fra.tsv")
    ap.add_argument("--work", type=Path, required=True, help="empty folder for data splits, runs and results")
    ap.add_argument("--keras-pairs", type=int, default=10000, help="first N pairs for the Keras configuration")
    ap.add_argument("--ablation-minutes", type=float, default=8.0, help="budget per attention-ablation run (0: skip)")
    ap.add_argument("--skip", default="", help="comma list of runs to skip: keras, default, ablation")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the runs (default: inherit)")
    ns = ap.parse_args()
    if ns.threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(ns.threads)

    from transferkit.core.datasets import read_pairs
    from transferkit.tasks.seq2seq.data import split_pairs

    work = ns.work
    work.mkdir(parents=True, exist_ok=True)
    pairs = read_pairs(ns.pairs).pairs
    keep, test = split_pairs(pairs, 0.1, seed=0, salt="test")
    keep_set, test_set = set(keep), set(test)

    def write(name: str, idx) -> Path:
        p = work / name
        p.write_text("".join(f"{pairs[i][0]}\t{pairs[i][1]}\n" for i in sorted(idx)), encoding="utf-8")
        return p

    n_k = min(ns.keras_pairs, len(pairs))
    files = {
        "keras_train": write("keras_train.tsv", [i for i in range(n_k) if i in keep_set]),
        "keras_test": write("keras_test.tsv", [i for i in range(n_k) if i in test_set]),
        "all_train": write("all_train.tsv", keep),
        "all_test": write("all_test.tsv", test),
    }
    counts = {k: sum(1 for _ in v.open(encoding="utf-8")) for k, v in files.items()}
    print(f"pairs: {counts} (test = a seeded 10% of source sentences, cut off before training)", flush=True)
    skip = set(filter(None, ns.skip.split(",")))
    results: dict[str, dict] = {}
    env_note = f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset (torch default)')}; cpu count {os.cpu_count()}"
    print(env_note, flush=True)

    def one(name: str, data: Path, flags: list[str], evals: list[tuple[str, Path, int | None]]) -> None:
        run_dir = work / name
        if run_dir.exists():
            raise SystemExit(f"{run_dir} exists; give an empty --work folder")
        print(f"[{name}] transferkit seq2seq fit {data.name} --out {name} {' '.join(flags)}", flush=True)
        wall = run(["seq2seq", "fit", str(data), "--out", str(run_dir), *flags], work / f"{name}.log")
        epochs, per_epoch = epoch_stats(run_dir)
        cfg = json.loads((run_dir / "model" / "config.json").read_text(encoding="utf-8"))
        r = {"flags": flags, "fit_wall_s": wall, "epochs": epochs, "s_per_epoch": per_epoch,
             "best_epoch": cfg["training"]["best_epoch"], "train_pairs": cfg["training"]["pairs_train"],
             "val_pairs": cfg["training"]["pairs_heldout"], "architecture": cfg["architecture"], "eval": {}}
        for label, path, beam in evals:
            r["eval"][label] = evaluate(run_dir, path, beam)
        results[name] = r
        print(f"[{name}] {epochs} epochs, {per_epoch:.1f} s/epoch, fit wall {wall / 60:.1f} min; "
              + "; ".join(f"{k}: chrF {v['chrf']:.2f} BLEU {v['bleu']:.2f} tok-acc {v['token_acc']:.3f} exact {v['exact']:.3f}"
                          for k, v in r["eval"].items()), flush=True)
        (work / "results.json").write_text(json.dumps(results, indent=2))

    if "keras" not in skip:
        one("keras", files["keras_train"], KERAS_FLAGS, [("keras_test", files["keras_test"], 1)])
    if "default" not in skip:
        one("default", files["all_train"], [], [
            ("keras_test", files["keras_test"], None), ("all_test", files["all_test"], None),
            ("keras_test_greedy", files["keras_test"], 1), ("all_test_greedy", files["all_test"], 1),
        ])
    if "ablation" not in skip and ns.ablation_minutes > 0:
        for att in ("none", "dot", "additive"):
            one(f"attn_{att}", files["all_train"], ["--attention", att, "--time-limit", str(ns.ablation_minutes)],
                [("all_test", files["all_test"], None), ("keras_test", files["keras_test"], None)])

    print("\n| run | test set | pairs | decoding | token acc | chrF | BLEU | exact | epochs | s/epoch | fit wall (min) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        for label, e in r["eval"].items():
            dec = "greedy" if e["beam"] == 1 else f"beam {e['beam']}"
            print(f"| {name} | {label.replace('_greedy', '')} | {e['pairs']} | {dec} | {e['token_acc']:.3f} | {e['chrf']:.2f} | "
                  f"{e['bleu']:.2f} | {e['exact']:.3f} | {r['epochs']} | {r['s_per_epoch']:.1f} | {r['fit_wall_s'] / 60:.1f} |")
    if "keras" in results and "default" in results:
        k = results["keras"]["eval"]["keras_test"]["chrf"]
        d = results["default"]["eval"]["keras_test"]["chrf"]
        print(f"\nchrF on the Keras configuration's test pairs: default {d:.2f} / keras {k:.2f} = {d / k:.2f}x (target >= 1.5x)")
        print(f"default fit wall time: {results['default']['fit_wall_s'] / 60:.1f} min (target <= 30)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
