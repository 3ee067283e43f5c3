"""Autoencoders on MNIST vs their linear / untrained baselines, each pair measured in this one run.

    flock /tmp/transferkit-heavy.lock python benchmarks/autoencoder_mnist.py ../shared/data/mnist

The folder holds MNIST's 10,000 test images; they are split 8,000 train /
2,000 test (stratified, seed 0).  Parts (``--parts``, default all):

* ``mse30``: 30-d codes: test MSE per pixel of each autoencoder kind vs PCA-30
  fitted on the same 8,000 images, and the ratio (targets: dense with default
  settings <= 0.5x, the best kind <= 0.4x);
* ``knn2``: 2-d codes: 5-nearest-neighbour test accuracy of the codes,
  autoencoder vs PCA-2;
* ``semi``: 100 labelled training images: greedy-pretrained stack (pretrained on
  all 8,000 unlabelled) + fine-tune vs the same network from random init;
* ``novelty``: digits 0-4 normal (from the 8,000), test ROC-AUC with 5-9 novel.

Each line gives the wall time of the training it reports.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

KINDS_30 = ("dense", "conv", "stacked", "denoising", "sparse")


def split_mnist(folder: str):
    from transferkit.core.datasets import ArrayData, load_mnist, stratified_split

    data = load_mnist(folder)
    if data.labels is None:
        sys.exit(f"{folder} has no labels file")
    tr, te = stratified_split(data.labels, 0.2, seed=0)
    train = ArrayData(data.images[tr], data.labels[tr], data.classes, f"mnist-train:{folder}")
    test = ArrayData(data.images[te], data.labels[te], data.classes, f"mnist-test:{folder}")
    return train, test


def flat(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


def pca_mse(train, test, k: int) -> float:
    from sklearn.decomposition import PCA

    pca = PCA(n_components=k, random_state=0).fit(flat(train.images))
    xt = flat(test.images)
    rec = np.clip(pca.inverse_transform(pca.transform(xt)), 0, 1)
    return float(np.mean((rec - xt) ** 2))


def codes_of(run: Path, images: np.ndarray) -> np.ndarray:
    import torch

    import transferkit
    from transferkit.tasks.autoencoder.data import to_float

    module = transferkit.load(run).module
    with torch.inference_mode():
        return module.encode(to_float(images)).numpy()


def part_mse30(train, test, work: Path, kinds, epochs: int | None) -> list[dict]:
    from transferkit.tasks.autoencoder import AEConfig, evaluate, fit

    rows = []
    t = time.perf_counter()
    base = pca_mse(train, test, 30)
    print(f"PCA-30 test MSE {base:.5f} (fit {time.perf_counter() - t:.1f} s)", flush=True)
    for kind in kinds:
        extra = {"epochs": epochs} if epochs else {}
        if kind == "stacked":
            cfg = AEConfig(kind="stacked", layers=(512, 256, 30), val_fraction=0.0, **extra)
        else:
            cfg = AEConfig(kind=kind, latent=30, val_fraction=0.0, **extra)
        t = time.perf_counter()
        run = fit(cfg, train, work / f"mse30-{kind}")
        secs = time.perf_counter() - t
        res = evaluate(run, test)
        row = {"part": "mse30", "kind": kind, "mse": res["mse"], "pca_mse": base, "ratio": res["mse"] / base,
               "seconds": secs, "mean_image_mse": res["mean_image_mse"]}
        if "denoised_mse" in res:
            row.update(denoised_mse=res["denoised_mse"], noisy_mse=res["noisy_mse"])
        print(f"{kind:>10}: test MSE {res['mse']:.5f} vs PCA-30 {base:.5f}: ratio {row['ratio']:.3f} "
              f"(train {secs:.0f} s)", flush=True)
        rows.append(row)
    return rows


def part_knn2(train, test, work: Path, kind: str, epochs: int | None) -> list[dict]:
    from sklearn.decomposition import PCA
    from sklearn.neighbors import KNeighborsClassifier

    from transferkit.tasks.autoencoder import AEConfig, fit

    def knn(a, b) -> float:
        clf = KNeighborsClassifier(n_neighbors=5).fit(a, train.labels)
        return float(clf.score(b, test.labels))

    t = time.perf_counter()
    pca = PCA(n_components=2, random_state=0).fit(flat(train.images))
    acc_pca = knn(pca.transform(flat(train.images)), pca.transform(flat(test.images)))
    t_pca = time.perf_counter() - t
    extra = {"epochs": epochs} if epochs else {}
    t = time.perf_counter()
    run = fit(AEConfig(kind=kind, latent=2, val_fraction=0.0, **extra), train, work / f"knn2-{kind}")
    secs = time.perf_counter() - t
    acc_ae = knn(codes_of(run, train.images), codes_of(run, test.images))
    print(f"2-d codes, 5-NN test accuracy: {kind} autoencoder {acc_ae:.4f} vs PCA-2 {acc_pca:.4f} "
          f"(ratio {acc_ae / acc_pca:.2f}; train {secs:.0f} s, PCA {t_pca:.1f} s)", flush=True)
    return [{"part": "knn2", "kind": kind, "knn_acc": acc_ae, "pca_knn_acc": acc_pca, "seconds": secs}]


def part_semi(train, test, work: Path, n_labelled: int, epochs: int | None) -> list[dict]:
    from transferkit.core.datasets import ArrayData
    from transferkit.tasks.autoencoder import AEConfig, FinetuneConfig, fit, finetune

    # the stack is pretrained on the 8,000 training images only (no labels, no test images);
    # the classifiers see `both` = the 8,000 training rows then the 2,000 test rows, with that split given
    both = ArrayData(np.concatenate([train.images, test.images]), np.concatenate([train.labels, test.labels]),
                     train.classes, "mnist-both")
    n_tr = len(train)
    split = (list(range(n_tr)), list(range(n_tr, len(both))))
    extra = {"epochs": epochs} if epochs else {}
    t = time.perf_counter()
    run = fit(AEConfig(kind="stacked", layers=(512, 256, 30), val_fraction=0.0, **extra), train, work / "semi-stack")
    t_pre = time.perf_counter() - t
    rows = []
    for init in ("pretrained", "random"):
        t = time.perf_counter()
        out = finetune(run, both, work / f"semi-{init}", FinetuneConfig(num_labelled=n_labelled, init=init), split=split)
        secs = time.perf_counter() - t
        res = json.loads((out / "metrics.json").read_text())
        rows.append({"part": "semi", "init": init, "accuracy": res["accuracy"], "accuracy_head": res.get("accuracy_head"),
                     "n_train": res["n_train"], "n_test": res["n_test"], "seconds": secs,
                     "pretrain_seconds": t_pre if init == "pretrained" else 0.0})
    p, r = rows
    print(f"{n_labelled} labels: greedy-pretrained stack + fine-tune {p['accuracy']:.4f} "
          f"(head only {p['accuracy_head']:.4f}) vs random init {r['accuracy']:.4f} "
          f"(ratio {p['accuracy'] / r['accuracy']:.2f}; pretraining {t_pre:.0f} s, fine-tune {p['seconds']:.0f} s "
          f"vs {r['seconds']:.0f} s)", flush=True)
    return rows


def part_novelty(train, test, work: Path, epochs: int | None) -> list[dict]:
    from transferkit.core.datasets import ArrayData
    from transferkit.tasks.novelty import NoveltyConfig, evaluate, fit

    normal = ("0", "1", "2", "3", "4")
    extra = {"epochs": epochs} if epochs else {}
    t = time.perf_counter()
    run = fit(NoveltyConfig(normal_classes=normal, **extra), train, work / "novelty")
    secs = time.perf_counter() - t
    test_data = ArrayData(test.images, test.labels, test.classes, "mnist-test")
    res = evaluate(run, test_data)
    print(f"novelty 0-4 normal vs 5-9 novel: test ROC-AUC {res['roc_auc']:.4f} "
          f"({res['n_normal']} normal, {res['n_novel']} novel; at the 99th-percentile threshold "
          f"{res['novel_flagged']:.1%} of novel / {res['normal_flagged']:.1%} of normal flagged; train {secs:.0f} s)",
          flush=True)
    return [{"part": "novelty", "roc_auc": res["roc_auc"], "novel_flagged": res["novel_flagged"],
             "normal_flagged": res["normal_flagged"], "seconds": secs}]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mnist", help="MNIST IDX folder (e.g. ../shared/data/mnist)")
    ap.add_argument("--parts", default="mse30,knn2,semi,novelty", help="comma list of parts to run")
    ap.add_argument("--kinds", default=",".join(KINDS_30), help="kinds for mse30")
    ap.add_argument("--knn-kind", default="dense", help="kind for the 2-d codes")
    ap.add_argument("--labels", type=int, default=100, help="labelled images for the semi-supervised part")
    ap.add_argument("--epochs", type=int, default=None, help="override the default epochs (quick checks only)")
    ap.add_argument("--work", default=None, help="folder for the runs (default: a temporary folder)")
    ap.add_argument("--json", default=None, help="also write all rows to this JSON file")
    ap.add_argument("--threads", type=int, default=1,
                    help="PyTorch CPU threads (default 1: on a shared 2-core machine two threads are often far slower)")
    args = ap.parse_args()

    os.environ.setdefault("TRANSFERKIT_PROGRESS", "0")
    import torch

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs", flush=True)
    train, test = split_mnist(args.mnist)
    print(f"MNIST split: {len(train)} train / {len(test)} test (stratified, seed 0)", flush=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="ae-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    rows: list[dict] = []
    t0 = time.perf_counter()
    if "mse30" in parts:
        rows += part_mse30(train, test, work, [k for k in args.kinds.split(",") if k], args.epochs)
    if "knn2" in parts:
        rows += part_knn2(train, test, work, args.knn_kind, args.epochs)
    if "semi" in parts:
        rows += part_semi(train, test, work, args.labels, args.epochs)
    if "novelty" in parts:
        rows += part_novelty(train, test, work, args.epochs)
    print(f"total {time.perf_counter() - t0:.0f} s; runs in {work}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
