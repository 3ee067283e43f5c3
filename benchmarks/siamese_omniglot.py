"""Siamese one-shot learning on Omniglot: trained on small1, 20-way one-shot on small2's unseen alphabets.

    flock /tmp/transferkit-heavy.lock python benchmarks/siamese_omniglot.py ../shared/data/omniglot --work /tmp/sb

``images_background_small1.zip`` (Balinese, Early_Aramaic, Greek, Korean,
Latin) is the training set.  ``images_background_small2.zip`` shares Greek and
Latin with it, so evaluation uses only its other alphabets: Japanese
(katakana), Sanskrit and Tagalog (106 characters, 20 drawings each), exactly
what ``transferkit siamese eval`` selects from the model's config.

Measured, all in this one run and on the same episodes:

* baselines with no training: nearest neighbour on raw pixels (105 px, L2),
  and cosine nearest neighbour on EfficientNet-Lite0's ImageNet features;
* each configuration (``--configs``): ``transferkit siamese fit small1.zip``
  (wall time of the command), then
  - 400 seeded 20-way one-shot episodes over the 106 unseen characters
    (``siamese eval ... --way 20 --shot 1 --episodes 400``), and
  - 20 runs in Lake et al.'s format (``siamese make-runs``: each run 20
    characters of one alphabet, katakana or Sanskrit (Tagalog has only 17),
    training and test drawings by two different drawers; ``siamese eval --runs``).

Ratios are against the raw-pixel baseline.  Configurations: ``default`` (the
flags-free ``siamese fit DATA --out RUN``), ``contrastive``, ``pair``,
``triplet``, ``lite0`` (pretrained EfficientNet-Lite0 encoder, fine-tuned),
``conv4`` (Prototypical Networks' CNN at 28 px); ``--budget MIN`` gives the
non-default ones a time budget.  ``ABLATION`` holds the step-budgeted runs
that chose the defaults (e.g. ``--configs supcon-1200,contrastive-1200``).  Evaluation embeds with the test-time
augmentation each model was saved with (``--tta``, 32 views by default) and, where saved,
the support-set centring (``--center``), aligned views (``--align-views``) and local-feature
matching (``--local-match``); the default model is also scored with plain mean-embedding
matching (``--no-align-views --local-match 0``), so the two matchings compare on one model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CONFIGS = {
    "default": [],
    "contrastive": ["--loss", "contrastive"],
    "pair": ["--loss", "pair"],
    "triplet": ["--loss", "triplet"],
    "lite0": ["--encoder", "efficientnet_lite0", "--freeze-to", "0", "--image-size", "64", "--batch-size", "64", "--lr", "1e-3"],
    "conv4": ["--encoder", "conv4", "--image-size", "28"],
}
# The ablation that chose the defaults: fixed step counts (so runs sharing the machine compare fairly),
# test-time augmentation off unless named; 1,200 steps of small-cnn cost about what 2,400 of conv4 do.
STEPS = ["--time-budget", "none"]
ABLATION = {
    "contrastive-1200": ["--loss", "contrastive", "--elastic", "0", "--tta", "0", "--epochs", "6", *STEPS],
    "contrastive-mirror-1200": ["--loss", "contrastive", "--elastic", "0", "--tta", "0", "--mirror", "--epochs", "6", *STEPS],
    "supcon-1200": ["--loss", "supcon", "--elastic", "0", "--tta", "0", "--epochs", "6", *STEPS],
    "conv4-contrastive-2400": ["--encoder", "conv4", "--image-size", "28", "--loss", "contrastive", "--elastic", "0",
                               "--tta", "0", "--epochs", "12", *STEPS],
    "conv4-supcon-2400": ["--encoder", "conv4", "--image-size", "28", "--loss", "supcon", "--elastic", "0", "--tta", "0",
                          "--epochs", "12", *STEPS],
    "conv4-supcon-elastic-2400": ["--encoder", "conv4", "--image-size", "28", "--loss", "supcon", "--elastic", "0.06",
                                  "--tta", "0", "--epochs", "12", *STEPS],
    "conv4-contrastive-elastic-6000": ["--encoder", "conv4", "--image-size", "28", "--loss", "contrastive", "--elastic",
                                       "0.06", "--tta", "0", "--epochs", "30", *STEPS],
    "supcon-elastic-3000": ["--loss", "supcon", "--elastic", "0.06", "--tta", "0", "--epochs", "15", *STEPS],
    "supcon-elastic-3000-tta": ["--loss", "supcon", "--elastic", "0.06", "--epochs", "15", *STEPS],
    # the defaults with one change, within the default 25-minute budget
    "elastic-0.1": ["--elastic", "0.1"],
    "size-64": ["--image-size", "64"],
    # the ink crop with and without, at equal steps (two at a time, one thread each)
    "crop-ink-4400": ["--epochs", "22", *STEPS],
    "no-crop-ink-4400": ["--no-crop-ink", "--epochs", "22", *STEPS],
}
CONFIGS.update(ABLATION)


def cli() -> list[str]:
    script = Path(sys.executable).with_name("transferkit")
    return [str(script)] if script.exists() else [sys.executable, "-m", "transferkit"]


def unseen_episodes(small1: Path, small2: Path, size: int, seed: int = 0, n: int = 400):
    """small2 at ``size`` px, its classes from alphabets not in small1, and the eval command's episodes."""
    from transferkit.tasks.siamese.data import load_image_set
    from transferkit.tasks.siamese.episodes import sample_episodes

    train_alphabets = {c.split("/")[0] for c in load_image_set(small1, 28, ink=False).classes}
    ds = load_image_set(small2, size, ink=False)  # the drawings as they are: the runs and the baselines see them whole
    keep = [k for k, c in enumerate(ds.classes) if ds.group_of(c) not in train_alphabets]
    return ds, keep, sample_episodes(ds.labels, keep, 20, 1, 1, n, seed)


def baseline_accuracy(features: np.ndarray, episodes, metric: str) -> tuple[float, float]:
    import torch

    from transferkit.tasks.siamese.episodes import episode_accuracies, mean_ci95

    f = torch.from_numpy(features).float()
    if metric == "cosine":
        f = torch.nn.functional.normalize(f, dim=-1)
    return mean_ci95(episode_accuracies(torch.cdist, f, episodes))


def runs_baseline(runs_dir: Path, embed) -> float:
    """Accuracy of a nearest-neighbour rule over Lake-format runs, given ``embed(paths) -> (n, D)`` tensor."""
    import torch

    from transferkit.tasks.siamese.episodes import read_runs

    ok = total = 0
    for run in read_runs(runs_dir):
        pred = torch.cdist(embed(run.test), embed(run.training)).argmin(1).numpy()
        ok += int((pred == np.asarray(run.answers)).sum())
        total += len(run.test)
    return ok / total


def lite0_features(images: np.ndarray) -> np.ndarray:
    """EfficientNet-Lite0 ImageNet features (pre-logits) of grey uint8 images, through ONNX Runtime."""
    import torch

    from transferkit.core.inference import OutputHead, Runner
    from transferkit.core.registry import create_encoder

    module, pre = create_encoder("efficientnet_lite0")
    size = pre.input_size[-1]
    runner = Runner(OutputHead.make(module, "pre_logits"), (3, size, size), engine="auto")
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    out = []
    for i in range(0, len(images), 64):
        x = torch.from_numpy(images[i:i + 64]).float().div(255)[:, None].expand(-1, 3, -1, -1)
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        out.append(runner((x - mean) / std))
    return np.concatenate(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("omniglot", help="folder with images_background_small1.zip and images_background_small2.zip")
    ap.add_argument("--work", default="/tmp/siamese_bench", help="folder for runs and trained models")
    ap.add_argument("--configs", default="default,contrastive,pair,triplet,lite0,conv4", help="comma list of: " + ", ".join(CONFIGS))
    ap.add_argument("--budget", type=float, default=None, help="--time-budget (minutes) for non-default configs")
    ap.add_argument("--no-baselines", action="store_true", help="skip the two untrained baselines")
    args = ap.parse_args()
    import torch

    from transferkit.tasks.siamese.oneshot import evaluate, evaluate_runs

    om = Path(args.omniglot)
    small1, small2 = om / "images_background_small1.zip", om / "images_background_small2.zip"
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}, torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"{torch.get_num_threads()} threads", flush=True)

    # ---- the runs (written once, from the unseen alphabets of small2, at Omniglot's 105 px)
    ds105, keep, episodes = unseen_episodes(small1, small2, 105)
    runs_dir = work / "runs20"
    if not runs_dir.is_dir():
        from transferkit.tasks.siamese.episodes import write_runs

        write_runs(ds105.images, ds105.labels, ds105.classes, runs_dir, n_runs=20, way=20, seed=0,
                   groups=[ds105.group_of(c) for c in ds105.classes], pool=keep)
    alphabets = sorted({ds105.group_of(ds105.classes[k]) for k in keep})
    print(f"evaluation: {len(keep)} unseen classes ({', '.join(alphabets)}); 400 episodes 20-way 1-shot; "
          f"20 runs in {runs_dir}", flush=True)

    rows = []
    pixel = None
    if not args.no_baselines:
        from transferkit.tasks.siamese.data import read_images

        flat = ds105.images.reshape(len(ds105.images), -1).astype(np.float32) / 255
        t = time.perf_counter()
        acc, ci = baseline_accuracy(flat, episodes, "l2")
        runs_acc = runs_baseline(runs_dir, lambda ps: torch.from_numpy(
            read_images(ps, 105, True)[0].reshape(len(ps), -1).astype(np.float32) / 255))
        pixel = acc
        rows.append(("raw pixels, nearest neighbour (L2)", "-", time.perf_counter() - t, acc, ci, runs_acc))
        print(f"raw pixels NN: episodes {acc:.1%} +- {ci:.1%}, runs {runs_acc:.1%}", flush=True)
        t = time.perf_counter()
        used = np.unique(np.concatenate([np.r_[e.support.ravel(), e.query.ravel()] for e in episodes]))
        feats = np.zeros((len(ds105.images), 1280), np.float32)
        feats[used] = lite0_features(ds105.images[used])
        acc, ci = baseline_accuracy(feats, episodes, "cosine")
        runs_acc = runs_baseline(runs_dir, lambda ps: torch.nn.functional.normalize(
            torch.from_numpy(lite0_features(read_images(ps, 105, True)[0])), dim=-1))
        rows.append(("EfficientNet-Lite0 ImageNet features, cosine NN", "-", time.perf_counter() - t, acc, ci, runs_acc))
        print(f"EfficientNet-Lite0 cosine NN: episodes {acc:.1%} +- {ci:.1%}, runs {runs_acc:.1%}", flush=True)

    for name in [c.strip() for c in args.configs.split(",") if c.strip()]:
        if name not in CONFIGS:
            sys.exit(f"unknown config {name!r}; known: {', '.join(CONFIGS)}")
        run = work / f"run_{name}"
        flags = list(CONFIGS[name])
        if args.budget and name != "default" and name not in ABLATION:
            flags += ["--time-budget", str(args.budget), "--epochs", "1000"]
        if not (run / "model" / "config.json").is_file():
            cmd = [*cli(), "siamese", "fit", str(small1), "--out", str(run), *flags]
            print("$ " + " ".join(cmd), flush=True)
            t = time.perf_counter()
            proc = subprocess.run(cmd, env={**os.environ, "TRANSFERKIT_PROGRESS": "lines"}, text=True)
            wall = time.perf_counter() - t
            if proc.returncode != 0:
                print(f"{name}: fit failed ({proc.returncode})", flush=True)
                continue
            (run / "bench_wall.txt").write_text(f"{wall:.1f}\n")
        wall = float((run / "bench_wall.txt").read_text()) if (run / "bench_wall.txt").is_file() else float("nan")
        res = evaluate(run, small2, way=20, shot=1, episodes=400, seed=0)
        res_runs = evaluate_runs(run, runs_dir)
        summary = json.loads((run / "summary.json").read_text())
        label = f"siamese {name}: {summary['encoder']}, {summary['loss']} loss ({' '.join(flags) or 'no flags'})"
        rows.append((label, f"{summary['steps']} steps", wall, res["accuracy"], res["ci95"], res_runs["accuracy"]))
        ratio = f", {res['accuracy'] / pixel:.2f}x raw pixels" if pixel else ""
        print(f"{label}: fit {wall / 60:.1f} min, episodes {res['accuracy']:.1%} +- {res['ci95']:.1%}{ratio}, "
              f"runs {res_runs['accuracy']:.1%} (per run: "
              + " ".join(f"{r['accuracy']:.0%}" for r in res_runs["runs"]) + ")", flush=True)
        if res["align"] or res["local"]:  # the same model, matched by mean embeddings only
            plain = evaluate(run, small2, way=20, shot=1, episodes=400, seed=0, align=False, local=0.0)
            plain_runs = evaluate_runs(run, runs_dir, align=False, local=0.0)
            rows.append((f"{label}, mean-embedding matching (--no-align-views --local-match 0)", "same model", wall,
                         plain["accuracy"], plain["ci95"], plain_runs["accuracy"]))
            print(f"{name} with mean-embedding matching: episodes {plain['accuracy']:.1%} +- {plain['ci95']:.1%}, "
                  f"runs {plain_runs['accuracy']:.1%}; aligned views + local match gain "
                  f"{res['accuracy'] - plain['accuracy']:+.1%} / {res_runs['accuracy'] - plain_runs['accuracy']:+.1%}",
                  flush=True)

    print("\n| method | training | wall time | 20-way 1-shot, 400 episodes (95% CI) | 20 runs (Lake format) |")
    print("|---|---|---|---|---|")
    for label, steps, wall, acc, ci, runs_acc in rows:
        print(f"| {label} | {steps} | {wall / 60:.1f} min | {acc:.1%} +- {ci:.1%} | {runs_acc:.1%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
