"""The degradation experiment of He et al. (2015) on MNIST: plain vs residual networks at two depths, same budget.

Trains plain{S}, plain{D}, resnet{S}, resnet{D} (the CIFAR-style 6n+2 stacks
of ``archs/resnet.py``, or the ImageNet-style 18/34 ones) from scratch with
``transferkit arch compare``'s engine: the same seeded 8,000 / 2,000 split of
the MNIST file, the same seed, batch order and schedule.  Prints final
training loss, held-out error and wall time per epoch of each, the deep /
shallow ratios, and whether the paper's qualitative result holds:

* degradation: the deeper *plain* network ends with a higher training loss
  than the shallower one;
* residual learning fixes it: the deeper *residual* network's training loss
  is at most the shallower one's.

    flock /tmp/transferkit-heavy.lock python benchmarks/arch_degradation.py ../shared/data/mnist \\
        --out /tmp/degradation --shallow 20 --deep 56 --width 16 --epochs 5
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="MNIST IDX folder (e.g. ../shared/data/mnist)")
    ap.add_argument("--out", required=True, help="new run folder")
    ap.add_argument("--shallow", type=int, default=20, help="depth of the shallow pair (20, 32, 44, 56, 110 or 18, 34, 50)")
    ap.add_argument("--deep", type=int, default=56, help="depth of the deep pair")
    ap.add_argument("--width", type=int, default=16, help="width of the first stage (default 16, as the paper's CIFAR nets)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--max-samples", type=int, default=None, help="use a subset (for a quick trial)")
    args = ap.parse_args()

    import torch

    from transferkit.tasks.arch.compare import CompareConfig, compare

    if args.threads:
        torch.set_num_threads(args.threads)
    names = (f"plain{args.shallow}", f"plain{args.deep}", f"resnet{args.shallow}", f"resnet{args.deep}")
    cfg = CompareConfig(
        names=names, data=args.data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        arch_args=(f"width={args.width}", "stem=small"), val_fraction=0.2, seed=0, max_samples=args.max_samples,
    )
    started = time.perf_counter()
    res = compare(cfg, args.out)
    total = time.perf_counter() - started
    nets = {r["name"]: r for r in res["networks"]}

    print(f"\n{res['data']}; {args.epochs} epochs, batch {args.batch_size}, SGD lr {args.lr} cosine, width {args.width}, "
          f"{torch.get_num_threads()} threads; total {total / 60:.1f} min")
    print(f"{'network':<10} {'params':>9} {'MACs':>8} {'train loss':>11} {'held-out err':>13} {'s/epoch':>8}")
    for n in names:
        r = nets[n]
        print(f"{n:<10} {r['params']:>9,} {r['macs'] / 1e6:>7.1f}M {r['final_train_loss']:>11.4f} "
              f"{100 * (1 - r['final_val_acc']):>12.2f}% {r['time_per_epoch_s']:>8.1f}")
    ps, pd, rs, rd = (nets[n] for n in names)
    plain_ratio = pd["final_train_loss"] / ps["final_train_loss"]
    res_ratio = rd["final_train_loss"] / rs["final_train_loss"]
    print(f"\nfinal training loss, deep / shallow: plain {plain_ratio:.2f}x, residual {res_ratio:.2f}x")
    print(f"held-out error, deep / shallow: plain {(1 - pd['final_val_acc']) / max(1 - ps['final_val_acc'], 1e-9):.2f}x, "
          f"residual {(1 - rd['final_val_acc']) / max(1 - rs['final_val_acc'], 1e-9):.2f}x")
    degraded = pd["final_train_loss"] > ps["final_train_loss"]
    fixed = rd["final_train_loss"] <= rs["final_train_loss"]
    print(f"deeper plain trains worse than shallower plain: {'yes' if degraded else 'NO'}")
    print(f"deeper residual at least as good as shallower residual: {'yes' if fixed else 'NO'}")
    print(f"He et al.'s qualitative result reproduced: {'yes' if degraded and fixed else 'NO'}")
    grads = {n: (nets[n]["grad_norms"][0], nets[n]["grad_norms"][-1]) for n in names}
    print("gradient norm at the start, first / last weight layer: "
          + ", ".join(f"{n} {a / b:.2f}" for n, (a, b) in grads.items()))
    Path(args.out, "benchmark.json").write_text(json.dumps({
        "names": names, "total_s": total, "plain_loss_ratio": plain_ratio, "residual_loss_ratio": res_ratio,
        "degraded": degraded, "fixed": fixed}, indent=2))
    print(f"report: {Path(args.out) / 'report.html'}")


if __name__ == "__main__":
    main()
