"""Seconds per training step of the yolo detector, contiguous vs channels_last memory format, in one run.

    python benchmarks/detect_train_speed.py --image-size 320 --batch-size 8 --steps 6
    python benchmarks/detect_train_speed.py --freeze-stages 0 2 3   # channels_last, each --freeze-stages N

With ``--freeze-stages``, the sides are instead channels_last steps with the backbone's first N stages frozen
(``detect fit --freeze-stages N``), each ratio against the first.

One step = forward, the detector's own loss, backward, AdamW step (what `detect fit` does per batch),
on random images with a few boxes each; the first two steps of each side are warm-up and not timed.
Both sides start from the same weights (seed 0); the backbone is EfficientNet-Lite0 without weights
(the speed does not depend on them).
"""

from __future__ import annotations

import argparse
import time

import torch


def seconds_per_step(channels_last: bool, size: int, batch: int, steps: int, classes: int = 3,
                     freeze: int = 0) -> float:
    from transferkit.tasks.detect.model import YoloDetector, freeze_stages

    torch.manual_seed(0)
    net = YoloDetector("efficientnet_lite0", classes, (0.5,) * 3, (0.5,) * 3).train()
    freeze_stages(net.body, freeze)
    x = torch.rand(batch, 3, size, size)
    s = size / 320
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 70.0], [100.0, 100.0, 150.0, 160.0], [200, 40, 222, 66]]) * s,
                "labels": torch.tensor([0, 1, 2]) % classes} for _ in range(batch)]
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], 1e-4)
    t0 = 0.0
    for i in range(steps + 2):
        if i == 2:
            t0 = time.perf_counter()
        loss = net.loss(net(x), targets, size)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-size", type=int, default=320)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per side (after 2 warm-up steps)")
    ap.add_argument("--freeze-stages", type=int, nargs="+", default=None, metavar="N",
                    help="compare channels_last steps with these numbers of frozen backbone stages instead")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.batch_size} x {args.image_size} px")
    if args.freeze_stages:
        first = None
        for n in args.freeze_stages:
            t = seconds_per_step(True, args.image_size, args.batch_size, args.steps, freeze=n)
            first = first or t
            print(f"--freeze-stages {n}  {t:.3f} s/step  {first / t:.2f}x")
        return
    a = seconds_per_step(False, args.image_size, args.batch_size, args.steps)
    b = seconds_per_step(True, args.image_size, args.batch_size, args.steps)
    print(f"contiguous     {a:.3f} s/step")
    print(f"channels_last  {b:.3f} s/step")
    print(f"speed-up       {a / b:.2f}x")


if __name__ == "__main__":
    main()
