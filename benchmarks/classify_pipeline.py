"""Where a classify training epoch spends its time on a CPU: data pipeline and training step, before/after.

    python benchmarks/classify_pipeline.py ../shared/data/hymenoptera/train

1. Data, one epoch of augmented 224x224 training tensors:
   * before: decode every JPEG every epoch and augment the PIL image
     (ImageFolder + RandomResizedCrop + flip, the tutorial's pipeline);
   * after: decode once (draft mode, resized to the 256 short side, uint8 in
     memory; this cost is paid once and printed), then transforms v2 on uint8
     tensors each epoch (classify's default augmentation).
2. One training step of EfficientNet-Lite0 (batch 16, forward + backward +
   AdamW), contiguous (NCHW) vs channels_last memory format, fp32.

Both sides of each comparison run in this one process; the ratios are printed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--epochs", type=int, default=2, help="data epochs to time (default: 2)")
    ap.add_argument("--steps", type=int, default=4, help="training steps to time per layout (default: 4)")
    args = ap.parse_args()

    import torch
    from torchvision import datasets, transforms

    from transferkit.core.augment import AugmentConfig, train_transform
    from transferkit.core.datasets import scan_class_folders
    from transferkit.core.images import SkipLog
    from transferkit.tasks.classify.data import MemoryImages, decode_all

    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    # ---- data: before
    tf = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                             transforms.Normalize(mean, std)])
    folder = datasets.ImageFolder(str(args.data), tf)
    t0 = time.perf_counter()
    for _ in range(args.epochs):
        for i in range(len(folder)):
            folder[i]
    before = (time.perf_counter() - t0) / args.epochs
    # ---- data: after
    files = scan_class_folders(args.data)
    t0 = time.perf_counter()
    images, ok = decode_all(files.paths, 256, "bicubic", SkipLog(), workers=0)
    decode_once = time.perf_counter() - t0
    mem = MemoryImages(images, [files.labels[i] for i in ok], train_transform(AugmentConfig(), 224, mean, std, resize_size=256))
    t0 = time.perf_counter()
    for _ in range(args.epochs):
        for i in range(len(mem)):
            mem[i]
    after = (time.perf_counter() - t0) / args.epochs
    n = len(folder)
    print(f"data, per epoch of {n} images: decode + PIL augment every epoch {before:.2f} s ({n / before:.0f} img/s); "
          f"in memory + v2 uint8 augment {after:.2f} s ({n / after:.0f} img/s): {before / after:.1f}x "
          f"(one-off decode {decode_once:.2f} s)")

    # ---- training step: contiguous vs channels_last
    from transferkit.core.backbones import resolve

    model = resolve("efficientnet_lite0").module
    model.reset_classifier(2)
    model.train()
    x = torch.randn(16, 3, 224, 224)
    y = torch.randint(0, 2, (16,))
    res = {}
    for layout in ("contiguous", "channels_last"):
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        m = model.to(memory_format=fmt)
        xx = x.contiguous(memory_format=fmt)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
        for step in range(args.steps + 1):
            if step == 1:
                t0 = time.perf_counter()  # the first step warms up oneDNN
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(xx), y).backward()
            opt.step()
        res[layout] = (time.perf_counter() - t0) / args.steps
    print(f"training step (batch 16, 224x224, fp32): contiguous {res['contiguous']:.2f} s, "
          f"channels_last {res['channels_last']:.2f} s: {res['contiguous'] / res['channels_last']:.2f}x")


if __name__ == "__main__":
    main()
