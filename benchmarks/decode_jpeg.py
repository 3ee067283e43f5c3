"""Decoding alone: transferkit's read_image_uint8 (torchvision decode_jpeg) vs Pillow + PIL-to-tensor, one thread.

Both sides produce the (3, H, W) uint8 tensor the eval transform starts from,
for every file of DATA, alternated ``--repeats`` times in one process; prints
ms per image (best pass of each side), the ratio, and whether the pixels agree.

    python benchmarks/decode_jpeg.py ../shared/data/hymenoptera/train [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--draft", type=int, default=256, help="draft size as for a 224 px model (resize to 256)")
    args = ap.parse_args()

    import torch
    from torchvision.transforms.v2.functional import pil_to_tensor

    from transferkit.core.images import list_images, read_image, read_image_uint8

    torch.set_num_threads(1)
    paths = list_images([args.data])
    draft = (args.draft, args.draft)

    def pillow(p):
        return pil_to_tensor(read_image(p, draft))

    def fast(p):
        return read_image_uint8(p, draft)

    times = {"pillow": [], "torchvision": []}
    for _ in range(args.repeats):
        for name, f in (("pillow", pillow), ("torchvision", fast)):
            t = time.perf_counter()
            for p in paths:
                f(p)
            times[name].append(time.perf_counter() - t)
    same = all(torch.equal(pillow(p), fast(p)) for p in paths)
    ms = {k: 1000 * min(v) / len(paths) for k, v in times.items()}
    print(f"Pillow {ms['pillow']:.2f} ms/img, read_image_uint8 {ms['torchvision']:.2f} ms/img: "
          f"{ms['pillow'] / ms['torchvision']:.2f}x faster; identical pixels on all {len(paths)} files: {same}")
    print(json.dumps({"images": len(paths), "pillow_ms": round(ms["pillow"], 2), "fast_ms": round(ms["torchvision"], 2),
                      "ratio": round(ms["pillow"] / ms["torchvision"], 2), "identical": same,
                      "passes_pillow_s": [round(x, 2) for x in times["pillow"]],
                      "passes_fast_s": [round(x, 2) for x in times["torchvision"]]}))


if __name__ == "__main__":
    main()
