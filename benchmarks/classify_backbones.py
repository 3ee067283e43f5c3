"""Which backbone should `classify fit` use by default?  Repeated stratified cross-validation, then unseen images.

1. A seeded stratified hold-out (``--holdout``, default 30%) is cut from DATA first
   and never looked at until step 4: it stands in for photos the project never saw.
2. For every backbone, features (pre_logits, the same as the ``features``
   strategy's) of every image and of its mirror image, through the feature cache.
3. On the remaining labelled images: repeated stratified K-fold cross-validation
   (``--folds`` x ``--repeats``) of the ``features`` strategy's logistic head for
   each backbone and each C of ``--cs`` (the head's fit on the fold's training
   images and their mirrors, scored on the fold's held-out images): mean +- std.
4. Each backbone's head (its best-by-CV C and the default C) fitted on all
   labelled images, scored on the hold-out, with a 95% Wilson interval.
5. ``--time-cli NAME,...``: a cold ``transferkit classify fit DATA --out RUN
   --backbone NAME`` (fresh feature cache, subprocess, imports included) on all of DATA.

    python benchmarks/classify_backbones.py ../shared/data/hymenoptera/train --json /tmp/bench/backbones.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--backbones", default="efficientnet_lite0,efficientnet_lite1,efficientnet_lite2")
    ap.add_argument("--holdout", type=float, default=0.3)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--cs", default="0.01,0.03,0.1,0.3,1")
    ap.add_argument("--default-c", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-cli", default="", help="backbones to time as a cold `classify fit` on all of DATA")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    import numpy as np
    from sklearn.model_selection import train_test_split

    import transferkit
    from transferkit.core.datasets import load_labelled
    from transferkit.core.featcache import extract_cached
    from transferkit.tasks.classify.evaluation import wilson_interval
    from transferkit.tasks.classify.features import _Mirrored, _fit_linear, cross_validate

    split = load_labelled(args.data, 0.2, args.seed)
    paths = list(split.train.paths) + list(split.val.paths)
    labels = np.asarray(list(split.train.labels) + list(split.val.labels))
    k = len(split.train.classes)
    idx = np.arange(len(paths))
    lab_idx, test_idx = train_test_split(idx, test_size=args.holdout, stratify=labels, random_state=args.seed)
    print(f"{len(paths)} images: {len(lab_idx)} labelled for cross-validation, {len(test_idx)} held out", flush=True)
    cs = [float(c) for c in args.cs.split(",")]
    results = {"images": len(paths), "labelled": len(lab_idx), "held_out": len(test_idx), "folds": args.folds,
               "repeats": args.repeats, "backbones": {}}
    for name in args.backbones.split(","):
        model = transferkit.load(name)
        t = time.perf_counter()
        plain = extract_cached(paths, model, layer="pre_logits")
        flip = extract_cached(paths, model, layer="pre_logits", transform=_Mirrored(model.transform()),
                              extra_key={"hflip": True}, runner=plain.runner)
        t_feat = time.perf_counter() - t
        assert plain.ok == list(range(len(paths))) == flip.ok, "unreadable files: drop them first"
        X, Xf = plain.features, flip.features
        row = {"feature_seconds": round(t_feat, 1), "cache_misses": plain.misses + flip.misses, "cv": {}}
        for c in cs:
            cv = cross_validate(X[lab_idx], labels[lab_idx], Xf[lab_idx], k, args.folds, args.repeats,
                                "logistic", c, False, args.seed)
            row["cv"][str(c)] = {"mean": round(cv["mean"], 4), "std": round(cv["std"], 4)}
        best_c = max(cs, key=lambda c: (row["cv"][str(c)]["mean"], -abs(np.log(c / args.default_c))))
        row["best_c"] = best_c
        for label, c in (("default_c", args.default_c), ("best_c", best_c)):
            Xtr = np.concatenate([X[lab_idx], Xf[lab_idx]])
            ytr = np.concatenate([labels[lab_idx], labels[lab_idx]])
            mean, scale = Xtr.mean(0), Xtr.std(0)
            scale[scale < 1e-6] = 1
            W, b = _fit_linear("logistic", (Xtr - mean) / scale, ytr, k, c, False, args.seed)
            pred = (((X[test_idx] - mean) / scale) @ W.T + b).argmax(1)
            right = int((pred == labels[test_idx]).sum())
            lo, hi = wilson_interval(right, len(test_idx))
            row[f"held_out_{label}"] = {"C": c, "accuracy": round(right / len(test_idx), 4), "right": right,
                                        "ci95": [round(lo, 3), round(hi, 3)]}
        results["backbones"][name] = row
        print(json.dumps({name: row}), flush=True)
    for name in [n for n in args.time_cli.split(",") if n]:
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "TRANSFERKIT_CACHE": os.path.join(tmp, "cache"), "TRANSFERKIT_PROGRESS": "0"}
            cmd = [sys.executable, "-m", "transferkit", "classify", "fit", args.data, "--out", os.path.join(tmp, "run"),
                   "--backbone", name]
            t = time.perf_counter()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            secs = time.perf_counter() - t
            last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
            results.setdefault("cold_fit", {})[name] = {"seconds": round(secs, 1), "rc": proc.returncode, "last_line": last}
            print(json.dumps({"cold_fit": name, "seconds": round(secs, 1), "rc": proc.returncode, "last_line": last}), flush=True)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
