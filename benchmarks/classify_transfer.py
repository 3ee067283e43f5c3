"""Transfer learning on ants/bees: every `classify` strategy against the PyTorch tutorial's recipe, in one run.

    python benchmarks/classify_transfer.py ../shared/data/hymenoptera/train --work .bench/classify

1. A seeded, stratified hold-out (default 20%) is cut from DATA; nothing below
   sees it until the final evaluation.  The rest is the training folder.
2. Reference: the recipe of PyTorch's transfer-learning tutorial on the same
   backbone (EfficientNet-Lite0, ImageNet weights): fine-tune all layers, SGD
   lr 0.001 momentum 0.9, StepLR(7, 0.1), 25 epochs, batch 4,
   RandomResizedCrop(224) + horizontal flip, files decoded by ImageFolder every
   epoch, a plain PyTorch loop (eager fp32), evaluated on the hold-out after
   every epoch as the tutorial evaluates on its validation set.
3. transferkit: `transferkit classify fit TRAIN --out RUN --strategy S` as a
   user types it (a subprocess: start-up and imports are in the wall time),
   then the run's model is evaluated on the hold-out.  The features strategy
   runs twice: with an empty feature cache, then with the cache warm.

Printed: hold-out accuracy and wall time of every run, the reference's time
to reach its own final accuracy, and the speed-up of transferkit's runs that
reach that accuracy.  ``--json FILE`` saves everything.
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

DEFAULT_VARIANTS = [
    "features:--strategy features",
    "freeze:--strategy freeze",
    "finetune:--strategy finetune",
    "gradual:--strategy gradual",
]


def make_holdout(data: Path, work: Path, fraction: float, seed: int) -> tuple[Path, Path, dict]:
    """Symlink a stratified split of DATA into work/train and work/holdout."""
    from transferkit.core.datasets import scan_class_folders, stratified_split

    files = scan_class_folders(data)
    tr, ho = stratified_split(files.labels, fraction, seed)
    for name, idx in (("train", tr), ("holdout", ho)):
        root = work / name
        if root.exists():
            shutil.rmtree(root)
        for i in idx:
            dest = root / files.classes[files.labels[i]] / files.paths[i].name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.symlink_to(files.paths[i].resolve())
    counts = {"train": len(tr), "holdout": len(ho), "classes": files.classes}
    return work / "train", work / "holdout", counts


def reference(train_dir: Path, holdout_dir: Path, epochs: int, seed: int) -> dict:
    """The tutorial's recipe, verbatim in spirit: a plain PyTorch loop (fine-tune everything)."""
    import torch
    from torch import nn
    from torchvision import datasets, transforms

    from transferkit.core.backbones import resolve

    torch.manual_seed(seed)
    t0 = time.perf_counter()
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    tf = {
        "train": transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                                     transforms.ToTensor(), transforms.Normalize(mean, std)]),
        "val": transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                                   transforms.Normalize(mean, std)]),
    }
    sets = {"train": datasets.ImageFolder(str(train_dir), tf["train"]), "val": datasets.ImageFolder(str(holdout_dir), tf["val"])}
    loaders = {k: torch.utils.data.DataLoader(v, batch_size=4, shuffle=(k == "train"), num_workers=4) for k, v in sets.items()}
    model = resolve("efficientnet_lite0").module
    model.reset_classifier(len(sets["train"].classes))  # the tutorial: model.fc = nn.Linear(num_ftrs, 2)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
    curve = []
    for epoch in range(epochs):
        model.train()
        for x, y in loaders["train"]:
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
        scheduler.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in loaders["val"]:
                correct += int((model(x).argmax(1) == y).sum())
        acc = correct / len(sets["val"])
        curve.append({"epoch": epoch + 1, "holdout_acc": acc, "seconds": time.perf_counter() - t0})
        print(f"  reference epoch {epoch + 1}/{epochs}: hold-out accuracy {acc:.4f} ({curve[-1]['seconds']:.0f} s)", flush=True)
    final = curve[-1]["holdout_acc"]
    reach = next(c["seconds"] for c in curve if c["holdout_acc"] >= final)
    return {"name": "reference (tutorial recipe)", "holdout_acc": final, "best_holdout_acc": max(c["holdout_acc"] for c in curve),
            "seconds": curve[-1]["seconds"], "seconds_to_final_acc": reach, "curve": curve}


def run_transferkit(name: str, flags: list[str], train_dir: Path, holdout_dir: Path, work: Path, cache: Path) -> dict:
    from transferkit.tasks.classify import evaluate

    out = work / "runs" / name
    if out.exists():
        shutil.rmtree(out)
    exe = Path(sys.executable).with_name("transferkit")
    cmd = [str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else ["-m", "transferkit"]),
           "classify", "fit", str(train_dir), "--out", str(out), *flags]
    env = {**os.environ, "TRANSFERKIT_CACHE": str(cache), "TRANSFERKIT_PROGRESS": "0"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    res = evaluate(out, holdout_dir)
    summary = json.loads((out / "summary.json").read_text())
    print(f"  {name}: hold-out accuracy {res['accuracy']:.4f}, {wall:.1f} s wall "
          f"(internal validation {summary['val_accuracy']:.4f}, {summary['epochs']} epochs)", flush=True)
    return {"name": f"transferkit {name}", "flags": " ".join(flags), "holdout_acc": res["accuracy"], "seconds": wall,
            "val_acc": summary["val_accuracy"], "epochs": summary["epochs"], "timings": summary["timings"],
            "holdout_errors": [p for p in res["predictions"] if p["true"] != p["pred"]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, help="class folders, e.g. ../shared/data/hymenoptera/train")
    ap.add_argument("--work", type=Path, default=Path(".bench/classify"), help="scratch folder (default: .bench/classify)")
    ap.add_argument("--holdout", type=float, default=0.2, help="hold-out fraction (default: 0.2)")
    ap.add_argument("--seed", type=int, default=0, help="hold-out split and reference seed (default: 0)")
    ap.add_argument("--ref-epochs", type=int, default=25, help="reference epochs (default: 25, the tutorial's)")
    ap.add_argument("--no-reference", action="store_true", help="skip the reference (to explore settings)")
    ap.add_argument("--variant", action="append", metavar="NAME:FLAGS",
                    help="a transferkit run, e.g. 'ft8:--strategy finetune --epochs 8' (default: the four strategies)")
    ap.add_argument("--json", type=Path, help="write all results here")
    args = ap.parse_args()

    import platform

    import torch

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    train_dir, holdout_dir, counts = make_holdout(args.data, work, args.holdout, args.seed)
    print(f"data: {args.data} -> {counts['train']} training images, {counts['holdout']} held out "
          f"(stratified, seed {args.seed}); classes {counts['classes']}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, GPU: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
    results = []
    variants = args.variant or DEFAULT_VARIANTS
    for spec in variants:
        name, _, flags = spec.partition(":")
        cache = work / f"cache-{name}"
        if cache.exists():
            shutil.rmtree(cache)
        results.append(run_transferkit(name, flags.split(), train_dir, holdout_dir, work, cache))
        if "features" in flags or not flags.strip() or "--strategy" not in flags:
            r = run_transferkit(name + " (warm cache)", flags.split(), train_dir, holdout_dir, work, cache)
            results.append(r)
    ref = None if args.no_reference else reference(train_dir, holdout_dir, args.ref_epochs, args.seed)
    if ref:
        results.append(ref)

    print("\n| run | hold-out accuracy | wall time (s) | speed-up vs reference |")
    print("| --- | --- | --- | --- |")
    for r in results:
        speed = ""
        if ref and r is not ref:
            speed = f"{ref['seconds'] / r['seconds']:.1f}x"
            if r["holdout_acc"] >= ref["holdout_acc"]:
                speed += f" ({ref['seconds_to_final_acc'] / r['seconds']:.1f}x to the reference's final accuracy)"
            else:
                speed += " (below the reference's final accuracy)"
        print(f"| {r['name']} | {r['holdout_acc']:.4f} | {r['seconds']:.1f} | {speed} |")
    if ref:
        print(f"\nreference: final hold-out accuracy {ref['holdout_acc']:.4f} (best {ref['best_holdout_acc']:.4f}), "
              f"reached after {ref['seconds_to_final_acc']:.0f} s of {ref['seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"counts": counts, "results": results}, indent=2))


if __name__ == "__main__":
    main()
