"""One trained Siamese model, four ways to match a one-shot query: what aligned views and local features add.

    python benchmarks/siamese_matching.py RUN --data images_background_small2.zip --runs runs20 runs100

Each image is embedded once (its 1 + tta test-time views and the encoder's
last feature map); then every test set is scored with the four matchings of
``transferkit.tasks.siamese.matching.Matching``, all centred on the support
set as the model was saved:

* ``plain``: mean embeddings (``eval --no-align-views --local-match 0``);
* ``aligned``: aligned views only (``--align-views --local-match 0``);
* ``local``: mean embeddings plus the local match (``--no-align-views --local-match W``);
* ``both``: aligned views plus the local match (``--align-views --local-match W``).

``--data``: the 400 seeded 20-way one-shot episodes of ``siamese eval`` (same
classes and seed); ``--runs``: folders in Lake et al.'s runs format.  Prints
one markdown table, with each refinement's gain over ``plain``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="run folder or model directory from `siamese fit`")
    ap.add_argument("--data", help="labelled images for 400 seeded 20-way one-shot episodes (as `siamese eval`)")
    ap.add_argument("--runs", nargs="*", default=[], help="folders of runs in Lake et al.'s format")
    ap.add_argument("--local", type=float, default=0.3, help="local-match weight W (default: 0.3, fit's default)")
    ap.add_argument("--tta", type=int, default=None, help="test-time views beyond the image (default: the model's)")
    args = ap.parse_args()
    import torch

    from transferkit.tasks.siamese.data import load_image_set, read_images
    from transferkit.tasks.siamese.episodes import episode_accuracies, mean_ci95, read_runs, sample_episodes
    from transferkit.tasks.siamese.matching import Matching
    from transferkit.tasks.siamese.oneshot import (
        episode_views, image_format, load_siamese, model_center, model_views, seen_filter)

    model = load_siamese(args.run)
    if args.tta is not None:
        model.config["siamese"]["tta"] = args.tta  # this comparison only; the model on disk is unchanged
    size, grey, ink = image_format(model)
    center = model_center(model)
    variants = {"plain": Matching(center), "aligned": Matching(center, align=True),
                "local": Matching(center, local=args.local), "both": Matching(center, align=True, local=args.local)}
    with_maps = variants["both"]  # embed with feature maps once; every variant reads what it needs
    rows = []
    if args.data:
        t = time.perf_counter()
        ds = load_image_set(args.data, size, grey, ink)
        keep, _ = seen_filter(model, ds)
        eps = sample_episodes(ds.labels, keep, 20, 1, 1, 400, 0)
        part = episode_views(model, ds.images, eps, with_maps)
        accs = {name: mean_ci95(episode_accuracies(model.module.cdist, part, eps, matching=m))
                for name, m in variants.items()}
        rows.append(("400 episodes (20-way 1-shot)", accs, time.perf_counter() - t))
    for runs_dir in args.runs:
        t = time.perf_counter()
        per = {name: [] for name in variants}
        ok = {name: 0 for name in variants}
        total = 0
        with torch.inference_mode():
            for run in read_runs(runs_dir):
                tr = model_views(model, read_images(run.training, size, grey, strict=True, ink=ink)[0], with_maps)
                te = model_views(model, read_images(run.test, size, grey, strict=True, ink=ink)[0], with_maps)
                for name, m in variants.items():
                    hit = int((m.scores(te, tr, model.module.cdist).argmax(dim=1).numpy() == np.asarray(run.answers)).sum())
                    ok[name] += hit
                    per[name].append(hit / len(run.test))
                total += len(run.test)
        accs = {name: (ok[name] / total, mean_ci95(per[name])[1]) for name in variants}
        rows.append((f"{runs_dir} ({len(per['plain'])} runs)", accs, time.perf_counter() - t))
    print(f"model {args.run}; centred: {center}; local weight {args.local:g}; "
          f"{model.config['siamese'].get('tta', 0)} test-time views")
    print("| test set | plain | aligned views | local match | both | gain of both | time |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, accs, secs in rows:
        cells = " | ".join(f"{accs[n][0]:.2%} +- {accs[n][1]:.1%}" for n in variants)
        print(f"| {label} | {cells} | {100 * (accs['both'][0] - accs['plain'][0]):+.2f} pts | {secs:.0f} s |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
