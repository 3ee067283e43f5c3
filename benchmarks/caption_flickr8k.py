"""Image captioning on Flickr8k: Show and Tell vs soft attention, tied vs untied weights, greedy vs beam.

Makes its own seeded image-level split of ``../shared/data/flickr8k`` (a sample
of ``--images`` photos; ``--test-fraction`` of them never seen in training or
validation), writes the training captions to a temporary ``captions.txt``
that points at the photos (nothing is copied), trains each variant with
``transferkit.tasks.caption.fit`` (features cached once per layer and shared
by the variants), and scores every variant on the test photos with beam 1, 3
and 5. All variants run in one process, one after the other, on the same
split and features; the table is printed as Markdown.

    python benchmarks/caption_flickr8k.py --images 2000 --variants none,tied,soft --minutes 5
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "flickr8k"

VARIANTS = {
    "default": dict(),  # `transferkit caption fit DATA --out RUN` with no options
    "none": dict(attention="none", tie_weights=False),
    "tied": dict(attention="none", tie_weights=True),
    "soft": dict(attention="soft", tie_weights=False),
    "soft-tied": dict(attention="soft", tie_weights=True),
    "gru": dict(decoder="gru", attention="none", tie_weights=False),
    "finetune": dict(attention="none", tie_weights=False, finetune_encoder=1),  # the encoder's top stage trains too
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--images", type=int, default=2000, help="photos sampled from the set (seeded)")
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--variants", default="none,tied,soft")
    ap.add_argument("--beams", default="1,3,5")
    ap.add_argument("--minutes", type=float, default=5.0, help="--time-budget of each fit")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--embed", type=int, default=None, help="default: CaptionConfig's")
    ap.add_argument("--hidden", type=int, default=None, help="default: CaptionConfig's")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="folder for the runs (default: a temporary folder)")
    ap.add_argument("--features-only", action="store_true", help="fill the feature cache and stop (untimed; run it outside the bench lock)")
    ap.add_argument("--no-prefetch", action="store_true",
                    help="do not compute features before the fits: each fit's minutes include feature extraction")
    args = ap.parse_args(argv)

    os.environ.setdefault("TRANSFERKIT_PROGRESS", "lines")
    from transferkit.tasks.caption.captioner import Captioner, evaluate
    from transferkit.tasks.caption.data import read_captions
    from transferkit.tasks.caption.train import CaptionConfig, fit

    data = read_captions(args.data)
    rng = random.Random(args.seed)
    idx = sorted(rng.sample(range(len(data)), min(args.images, len(data))))
    rng.shuffle(idx)
    n_test = round(len(idx) * args.test_fraction)
    test, train = sorted(idx[:n_test]), sorted(idx[n_test:])
    work = Path(args.out or tempfile.mkdtemp(prefix="caption_flickr8k_"))
    (work / "train").mkdir(parents=True, exist_ok=True)
    with (work / "train" / "captions.txt").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        for i in train:
            for c in data.captions[i]:
                w.writerow([str(data.images[i].resolve()), c])
    test_file = work / "test.jsonl"
    test_file.write_text("".join(json.dumps({"image": str(data.images[i].resolve()), "captions": data.captions[i]}) + "\n"
                                 for i in test))
    print(f"{len(train)} training photos (10% of them validation), {len(test)} test photos; runs in {work}", file=sys.stderr)

    # encoder features once per layer, before any fit: the fits and the test scoring then read the cache,
    # so each fit's minutes are training time and captions/s is decoding time
    from transferkit.tasks.caption.features import cached_features, create_image_encoder

    names = args.variants.split(",")
    layers = sorted({"grid" if VARIANTS[n].get("attention") == "soft" else "pooled" for n in names})
    encoder, pre, arch = create_image_encoder("efficientnet_lite0")
    all_paths = [data.images[i].resolve() for i in train + test]
    for layer in [] if args.no_prefetch else layers:
        res = cached_features(all_paths, encoder, arch, pre, layer)
        print(f"features ({layer}): {res.misses} computed, {res.hits} cached, "
              f"{res.misses / max(res.seconds, 1e-9):.1f} img/s computed", file=sys.stderr)

    if args.features_only:
        return 0
    beams = [int(b) for b in args.beams.split(",")]
    rows = []
    for name in names:
        sizes = {k: v for k, v in (("embed", args.embed), ("hidden", args.hidden)) if v is not None}
        cfg = CaptionConfig(**VARIANTS[name], **sizes, epochs=args.epochs, time_budget=args.minutes, seed=args.seed)
        t0 = time.monotonic()
        r = fit(cfg, work / "train", work / f"run_{name}")
        fit_s = time.monotonic() - t0
        cap = Captioner.load(work / f"run_{name}")
        epochs = cap.config["training"]["epochs_run"]
        for beam in beams:
            s = evaluate(work / f"run_{name}", test_file, beam=beam, report=False, captioner=cap)
            rows.append({"variant": name, "beam": beam, "decoder_parameters": r["decoder_parameters"], "epochs": epochs,
                         "fit_min": fit_s / 60, **{k: s[k] for k in ("bleu1", "bleu2", "bleu3", "bleu4", "cider",
                                                                    "unique_ratio", "captions_per_second", "n_images")}})
            print(json.dumps(rows[-1]), flush=True)
    print("\n| variant | decoder params | epochs | fit min | beam | BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | CIDEr-D | distinct | captions/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['decoder_parameters'] / 1e6:.2f} M | {r['epochs']} | {r['fit_min']:.1f} | {r['beam']} | "
              f"{r['bleu1']:.1f} | {r['bleu2']:.1f} | {r['bleu3']:.1f} | {r['bleu4']:.1f} | {r['cider']:.3f} | "
              f"{r['unique_ratio']:.2f} | {r['captions_per_second']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
