"""GAN ablations: `gan fit` variants for the same training time (or steps), each scored by one judge.

DCGAN (default, ``--kind dcgan``) on MNIST:
Each variant is the default config with some fields overridden (JSON), trained on the same seeded
90/10 split of the MNIST IDX files that ``gan fit`` makes, then scored on the held-out digits by the
benchmark's LeNet-5 judge (``gan_mnist.py``: 10 epochs on the training rows' labels, cached in
``OUT/lenet.pt``): FID / KID on its 84-d F6 features with the real-vs-real floor, the share of samples
it classifies with p > 0.9 against the real digits' share, and the largest digit share.  Each saved
generator is scored as saved (eval mode) and, for comparison, with its batch-norm statistics
recomputed from its own outputs (``recal``) and in train mode (batch statistics).

pix2pix (``--kind pix2pix``, DATA a folder of photos): ``--edges`` pairs, 10% held out, each variant scored by
``gan eval`` on the held-out photos (FID / KID on EfficientNet-Lite0 features, floor, SSIM, PSNR, L1).

    python benchmarks/gan_ablation.py ../shared/data/mnist --out /tmp/abl --minutes 8.8 --threads 1 \\
        --variant default={} --variant b32='{"batch_size": 32}' --variant lr4='{"lr": 4e-4}'
    python benchmarks/gan_ablation.py ../shared/data/flickr8k/images --kind pix2pix --out /tmp/p2p --steps 1319 \\
        --threads 1 --variant adv3='{"adv_weight": 3}'

Variants run one after the other; to run two at once on a 2-core host, start two processes with
``--threads 1`` (each then owns a core, so equal minutes stay comparable).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gan_mnist import lenet_outputs, train_lenet  # noqa: E402  (the same judge as the main GAN benchmark)


def judge(data: str, out: Path, seed: int):
    """(LeNet-5 in eval mode, held-out digits (N, 1, 28, 28), their F6 features, real confident share)."""
    from transferkit.archs.lenet import LeNet5
    from transferkit.core.datasets import load_mnist
    from transferkit.tasks.gan.data import split_rows, to_tensor
    from transferkit.tasks.gan.metrics import confident_share

    arrays = load_mnist(data)
    x_all, y_all = to_tensor(arrays.images), torch.as_tensor(arrays.labels)
    train, held = split_rows(len(arrays), 0.1, seed)  # the split fit makes (val_fraction 0.1, seed)
    path = out / "lenet.pt"
    if path.is_file():
        net = LeNet5(10, 1)
        net.load_state_dict(torch.load(path, weights_only=True))
        net.eval()
    else:
        net = train_lenet(x_all[train], y_all[train], out / "lenet", 10, seed)
        torch.save(net.state_dict(), path)
    real_f, real_p = lenet_outputs(net, x_all[held])
    return net, len(held), real_f, confident_share(real_p)


def recalibrated(gen: torch.nn.Module, batches: int = 100, batch: int = 64) -> torch.nn.Module:
    """A copy of a generator with its batch-norm statistics recomputed from its own outputs (what ``fit`` does
    to the EMA generator since commit ``633ad0a``; here with seed 5, as in the recorded runs)."""
    from transferkit.tasks.gan.module import recalibrate_batch_norm

    g = copy.deepcopy(gen)
    recalibrate_batch_norm(g, batches, batch, seed=5)
    return g.eval()


def score(lenet, gen, n: int, latent: int, real_f, real_share: float, seed: int, train_mode: bool = False) -> dict:
    from transferkit.tasks.gan.metrics import confident_share, fid_report
    from transferkit.tasks.gan.train import generate

    z = torch.randn(n, latent, generator=torch.Generator().manual_seed(seed + 1))
    if train_mode:
        gen.train()
        with torch.no_grad():
            fake = torch.cat([gen(z[i : i + 64]) for i in range(0, n, 64)])
        gen.eval()
    else:
        fake = generate(gen, z)
    f, p = lenet_outputs(lenet, fake)
    r = fid_report(real_f, f, seed=seed)
    digits = np.bincount(p.argmax(1), minlength=10) / len(p)
    return {"fid": round(r["fid"], 3), "kid": round(r["kid"], 4), "fid_floor": round(r["fid_floor"], 3),
            "confident_vs_real": round(confident_share(p) / real_share, 3), "top_digit_share": float(digits.max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="MNIST IDX folder (dcgan) or a folder of photos (pix2pix)")
    ap.add_argument("--kind", choices=("dcgan", "pix2pix"), default="dcgan")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--variant", action="append", required=True, metavar="NAME=JSON",
                    help="a name and the GANConfig fields it overrides, e.g. b32='{\"batch_size\": 32}'")
    ap.add_argument("--minutes", type=float, default=None, help="training minutes per variant (equal time)")
    ap.add_argument("--steps", type=int, default=None, help="generator steps per variant (equal steps)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if (args.minutes is None) == (args.steps is None):
        ap.error("give exactly one of --minutes and --steps")
    from transferkit.tasks.gan import GANConfig, evaluate, fit
    from transferkit.tasks.gan.train import load_gan

    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.kind == "dcgan":
        lenet, n, real_f, real_share = judge(args.data, args.out, args.seed)
    rows = {}
    for spec in args.variant:
        name, _, over = spec.partition("=")
        kw = dict(kind=args.kind, epochs=1000, fid=False, seed=args.seed, threads=args.threads,
                  time_budget=args.minutes or 0, max_steps=args.steps)
        if args.kind == "pix2pix":
            kw.update(edges=True, val_fraction=0.1)
        kw.update(json.loads(over or "{}"))
        run = args.out / name
        fit(GANConfig(**kw), args.data, run)
        res = json.loads((run / "metrics.json").read_text())
        if args.kind == "pix2pix":
            r = evaluate(run, args.data, seed=args.seed)
            rows[name] = {"over": json.loads(over or "{}"), "steps": res["steps"], "train_seconds": res["train_seconds"],
                          "as_saved": {k: r[k] for k in ("fid", "kid", "fid_floor", "ssim", "psnr", "l1")}}
            print(name, json.dumps(rows[name]), file=sys.stderr, flush=True)
            continue
        tm, _ = load_gan(run)
        gen, latent = tm.module, int(tm.config["latent"])
        rows[name] = {"over": json.loads(over or "{}"), "steps": res["steps"], "train_seconds": res["train_seconds"],
                      "as_saved": score(lenet, gen, n, latent, real_f, real_share, args.seed),
                      "recal": score(lenet, recalibrated(gen), n, latent, real_f, real_share, args.seed),
                      "train_mode": score(lenet, gen, n, latent, real_f, real_share, args.seed, train_mode=True)}
        print(name, json.dumps(rows[name]), file=sys.stderr, flush=True)
    first = next(iter(rows.values()))["as_saved"]["fid"]
    for r in rows.values():
        r["fid_vs_first"] = round(r["as_saved"]["fid"] / first, 3) if first else None
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "variants": rows}
    if args.kind == "dcgan":
        result["real_confident_share"] = real_share
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
