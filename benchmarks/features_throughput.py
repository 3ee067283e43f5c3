"""Feature-extraction throughput: transferkit vs the naive tutorial baseline, in one run.

Baseline (what tutorials write): PIL loading in the main process, torchvision
Resize/CenterCrop/ToTensor/Normalize, eager fp32, batch 32, ``torch.no_grad``.
transferkit: ``transferkit.features`` (decoding in DataLoader workers, the
engine chosen for the machine; ONNX Runtime on CPU).  Both include image
decoding and preprocessing; transferkit's time also includes its one-off engine
set-up (the in-memory ONNX export).  Model loading is excluded on both sides.

Also checks top-1 agreement of transferkit's predictions with the fp32 eager
baseline on the same images (target >= 99%).

    python benchmarks/features_throughput.py ../shared/data/hymenoptera/train [--repeats 2] [--pillow-side]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time


def baseline(paths, module, pre, batch_size=32):
    """The tutorial loop; returns (features, logits, seconds)."""
    import torch
    from PIL import Image
    from torchvision import transforms

    interp = transforms.InterpolationMode.BICUBIC if pre.interpolation == "bicubic" else transforms.InterpolationMode.BILINEAR
    tf = transforms.Compose([
        transforms.Resize(pre.resize_size, interpolation=interp),
        transforms.CenterCrop(pre.input_size[1]),
        transforms.ToTensor(),
        transforms.Normalize(pre.mean, pre.std),
    ])
    feats, logits = [], []
    t = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(paths), batch_size):
            x = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths[i : i + batch_size]])
            f = module.forward_head(module.forward_features(x), pre_logits=True)
            feats.append(f)
            logits.append(module.get_classifier()(f))
    return torch.cat(feats).numpy(), torch.cat(logits).numpy(), time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="image folder, e.g. ../shared/data/hymenoptera/train")
    ap.add_argument("--repeats", type=int, default=2, help="alternate both sides this many times, keep each side's best")
    ap.add_argument("--engine", default="auto", help="transferkit engine (auto, onnx, torch)")
    ap.add_argument("--pillow-side", action="store_true",
                    help="also time transferkit with Pillow decoding (as before issue 20's torchvision decode_jpeg)")
    args = ap.parse_args()

    import numpy as np
    import torch

    import transferkit
    from transferkit.core.images import list_images
    from transferkit.core.inference import cpu_supports_bf16

    paths = list_images([args.data])
    model = transferkit.load("efficientnet_lite0")
    pre = model.preprocessing
    from transferkit.core import inference

    fast_reader = inference.read_image_uint8

    def pillow_reader(path, draft_size=None):  # decoding before issue 20: Pillow, then a PIL-to-tensor copy
        from torchvision.transforms.v2.functional import pil_to_tensor

        return pil_to_tensor(inference.read_image(path, draft_size))

    base_t, tk_t, pil_t = [], [], []
    for _ in range(args.repeats):
        b_feats, b_logits, t = baseline(paths, model.module, pre)
        base_t.append(t)
        t = time.perf_counter()
        fs = transferkit.features(paths, model=model, engine=args.engine)
        tk_t.append(time.perf_counter() - t)
        if args.pillow_side:
            inference.read_image_uint8 = pillow_reader
            try:
                t = time.perf_counter()
                fs_pil = transferkit.features(paths, model=model, engine=args.engine)
                pil_t.append(time.perf_counter() - t)
            finally:
                inference.read_image_uint8 = fast_reader
            assert np.allclose(fs_pil.features, fs.features, atol=1e-4), "the two decoders gave other features"
    preds = transferkit.predict(paths, model=model, top_k=1, engine=args.engine)
    names = model.class_names
    base_top1 = [names[i] for i in b_logits.argmax(1)]
    agree = float(np.mean([p["top"][0]["label"] == b for p, b in zip(preds, base_top1)]))
    cos = np.sum(fs.features * b_feats, 1) / (np.linalg.norm(fs.features, axis=1) * np.linalg.norm(b_feats, axis=1))
    n = len(paths)
    base_ips, tk_ips = n / min(base_t), n / min(tk_t)
    result = {
        "images": n,
        "baseline_img_per_s": round(base_ips, 1),
        "transferkit_img_per_s": round(tk_ips, 1),
        "ratio": round(tk_ips / base_ips, 2),
        "top1_agreement": round(agree, 4),
        "min_feature_cosine": round(float(cos.min()), 5),
        "engine": args.engine,
        "torch_threads": torch.get_num_threads(),
        "cpu_bf16": cpu_supports_bf16(),
        "cuda": torch.cuda.is_available(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
    }
    print(f"baseline (PIL + eager fp32, batch 32): {base_ips:6.1f} img/s")
    print(f"transferkit features ({args.engine}):        {tk_ips:6.1f} img/s")
    print(f"ratio: {tk_ips / base_ips:.2f}x   top-1 agreement: {agree:.2%}   min feature cosine: {cos.min():.5f}")
    if pil_t:
        pil_ips = n / min(pil_t)
        result["transferkit_pillow_decoding_img_per_s"] = round(pil_ips, 1)
        result["ratio_pillow_decoding"] = round(pil_ips / base_ips, 2)
        print(f"transferkit with Pillow decoding (before): {pil_ips:6.1f} img/s ({pil_ips / base_ips:.2f}x the baseline); "
              f"torchvision decoding is {tk_ips / pil_ips:.2f}x that")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
