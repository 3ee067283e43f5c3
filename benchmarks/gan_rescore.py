"""Score saved DCGAN MNIST runs again with more samples: the 500-sample figures of ``gan_ablation.py`` and
``gan_mnist.py`` move by about +-0.04 in the confident share from one set of z to the next (a share near 0.7
of 500 samples has a standard error of 0.02), which is as large as most differences between variants.

Each generator (as saved, eval mode) draws ``--samples`` digits from seeded z; the judge is the benchmark's LeNet-5
(``gan_mnist.py``: trained on the training rows' labels of the seeded 90/10 split ``gan fit`` makes, cached in
``JUDGE_DIR/lenet.pt``, so pass the ``--out`` folder of an earlier ablation of the same ``--split-seed`` to reuse
its judge).  Printed per
run: the share of samples classified with p > 0.9 against the real held-out digits' share (all ``--samples``),
FID / KID on LeNet-5 F6 features as the mean and spread over chunks of 500 samples, each against the same half
of the 1,000 held-out digits as in the ablations (the floor: that half against the other), and the largest digit
share.

    python benchmarks/gan_rescore.py ../shared/data/mnist --judge-dir /tmp/g/w32b1 RUN [RUN ...] --samples 5000
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gan_ablation import judge  # noqa: E402  (the same judge and split as the ablations)
from gan_mnist import lenet_outputs  # noqa: E402


def rescore(run: str, lenet, real_f, real_share: float, samples: int, seed: int, split_seed: int = 0) -> dict:
    from transferkit.tasks.gan.metrics import confident_share, fid_report
    from transferkit.tasks.gan.train import generate, load_gan

    tm, _ = load_gan(run)
    gen = tm.module.eval()
    z = torch.randn(samples, gen.latent, generator=torch.Generator().manual_seed(seed))
    f, p = lenet_outputs(lenet, generate(gen, z))
    chunk = len(real_f) // 2  # fid_report compares half the real digits (the ablations' halves) with as many fakes
    reports = [fid_report(real_f, f[i : i + chunk], seed=split_seed) for i in range(0, samples - chunk + 1, chunk)]
    fids, kids = [r["fid"] for r in reports], [r["kid"] for r in reports]
    digits = np.bincount(p.argmax(1), minlength=10) / len(p)
    return {"samples": samples, "confident_vs_real": round(confident_share(p) / real_share, 3),
            "fid_mean": round(float(np.mean(fids)), 3), "fid_sd": round(float(np.std(fids)), 3),
            "kid_mean": round(float(np.mean(kids)), 4), "fid_chunks": len(fids), "fid_floor": round(reports[0]["fid_floor"], 3),
            "top_digit_share": round(float(digits.max()), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="the MNIST IDX folder the runs were trained on")
    ap.add_argument("runs", nargs="+", help="DCGAN run or model directories")
    ap.add_argument("--judge-dir", required=True, type=Path, help="folder holding (or to hold) the judge's lenet.pt")
    ap.add_argument("--samples", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=11, help="seed of the z drawn")
    ap.add_argument("--split-seed", type=int, default=0, help="the runs' --seed: their split, so the judge's and the held-out digits")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.judge_dir.mkdir(parents=True, exist_ok=True)
    lenet, _, real_f, real_share = judge(args.data, args.judge_dir, args.split_seed)
    if args.samples < len(real_f) // 2:
        ap.error(f"--samples must be at least {len(real_f) // 2} (half the held-out digits)")
    print(f"real held-out digits with p > 0.9: {real_share:.3f}", flush=True)
    for run in args.runs:
        print(run, json.dumps(rescore(run, lenet, real_f, real_share, args.samples, args.seed, args.split_seed)), flush=True)


if __name__ == "__main__":
    main()
