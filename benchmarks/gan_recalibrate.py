"""A saved pix2pix run scored as saved and with its batch-norm statistics recomputed over its training inputs.

    python benchmarks/gan_recalibrate.py RUN_DIR [RUN_DIR ...] --data PHOTOS --out DIR [--threads N]

``gan fit`` trains pix2pix with a moving average of the generator (``--ema``), whose batch-norm layers
borrow the live generator's running statistics during training.  Since this benchmark was added, ``fit``
replaces them at the end with the averaged generator's own (train-mode batch norm, dropout off, one pass
over the training inputs: ``recalibrate_batch_norm``).  This script measures that step on runs saved before
it: each run is scored by ``gan eval``'s code on its held-out rows as saved, then copied under ``--out``
with the statistics recomputed over the inputs of its own training rows, and scored again, in one run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch


def recalibrated_copy(run: Path, data: str, out: Path) -> Path:
    """A copy of RUN (config, split, model) whose generator has the recomputed statistics."""
    from transferkit.core.config import load
    from transferkit.core.modeldir import save_model_dir
    from transferkit.tasks.gan import GANConfig
    from transferkit.tasks.gan.module import recalibrate_batch_norm
    from transferkit.tasks.gan.train import load_gan, prepare_data

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name in ("config.yaml", "split.json"):
        shutil.copy(run / name, out / name)
    tm, _ = load_gan(run)
    cfg = GANConfig(**load(GANConfig, run / "config.yaml"))
    d = prepare_data(cfg, data)  # the same seeded split as the run's fit
    gen = tm.module
    recalibrate_batch_norm(gen, inputs=d.a[d.train])
    gen.eval()
    save_model_dir(gen, tm.config, out / "model")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="pix2pix run folders (gan fit --kind pix2pix)")
    ap.add_argument("--data", required=True, help="the photo folder the runs were trained on")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    from transferkit.tasks.gan import evaluate

    if args.threads:
        torch.set_num_threads(args.threads)
    keys = ("fid", "kid", "fid_floor", "ssim", "psnr", "l1")
    rows = {}
    for run in args.runs:
        seed = int(json.loads((run / "model" / "config.json").read_text()).get("training", {}).get("seed", 0))
        before = evaluate(run, args.data, seed=seed)
        copy = recalibrated_copy(run, args.data, args.out / f"{run.parent.name}_{run.name}")
        after = evaluate(copy, args.data, seed=seed)
        rows[str(run)] = {"seed": seed, "as_saved": {k: before[k] for k in keys},
                          "recalibrated": {k: after[k] for k in keys},
                          "fid_ratio": round(after["fid"] / before["fid"], 3)}
        print(str(run), json.dumps(rows[str(run)]), file=sys.stderr, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "runs": rows}
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
