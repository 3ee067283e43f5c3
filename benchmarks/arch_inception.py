"""Naive vs reduced Inception module at GoogLeNet's inception(3a) sizes: parameters, MACs, CPU time.

Both modules take GoogLeNet's 28x28x192 input with #1x1 64, #3x3 128, #5x5 32;
the reduced one adds the 1x1 reductions (#3x3 reduce 96, #5x5 reduce 16, pool
proj 32).  The naive module's pooling branch passes all 192 input channels
on (416 outputs instead of 256), so the next module gets more expensive as
well: the second part stacks inception(3b) on top and compares the pair.

    python benchmarks/arch_inception.py [--batch 32] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from transferkit.archs.inception import GOOGLENET, inception_module
from transferkit.tasks.arch.summary import summarize


def timed(module: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    """Median seconds of one forward pass (inference mode, after a warm-up)."""
    module.eval()
    times = []
    with torch.inference_mode():
        module(x)
        for _ in range(repeats):
            t = time.perf_counter()
            module(x)
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def stack(rows, naive: bool) -> torch.nn.Sequential:
    """Modules built from table rows, each taking the previous one's output channels."""
    mods, ch = [], 192
    for row in rows:
        m = inception_module(ch, row[1:], naive)
        mods.append(m)
        ch = m.out_channels
    return torch.nn.Sequential(*mods)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32, help="batch for the timing (default 32)")
    ap.add_argument("--repeats", type=int, default=5, help="timed forward passes (median reported)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    a3, b3 = GOOGLENET[0], GOOGLENET[1]
    cases = {
        "inception(3a)": (stack([a3], naive=True), stack([a3], naive=False)),
        "inception(3a)+(3b)": (stack([a3, b3], naive=True), stack([a3, b3], naive=False)),
    }
    x = torch.randn(args.batch, 192, 28, 28)
    print(f"input 192x28x28, torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch} for time")
    print(f"{'case':<20} {'module':<8} {'out ch':>7} {'params':>11} {'MACs/sample':>14} {'forward ms':>11}")
    for case, (naive, reduced) in cases.items():
        figures = {}
        for kind, mod in (("naive", naive), ("reduced", reduced)):
            s = summarize(mod, (192, 28, 28))
            ms = 1000 * timed(mod, x, args.repeats)
            figures[kind] = (s.total_params, s.total_macs, ms)
            print(f"{case:<20} {kind:<8} {s.output_shape[0]:>7} {s.total_params:>11,} {s.total_macs:>14,} {ms:>11.1f}")
        (pn, mn, tn), (pr, mr, tr) = figures["naive"], figures["reduced"]
        print(f"{case:<20} {'ratio':<8} {'':>7} {pn / pr:>10.2f}x {mn / mr:>13.2f}x {tn / tr:>10.2f}x  (naive / reduced)")


if __name__ == "__main__":
    main()
