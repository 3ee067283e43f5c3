"""`detect predict` speed: the detector's network in eager PyTorch against ONNX Runtime, in one run.

    python benchmarks/detect_predict_speed.py RUN_DIR IMAGES_FOLDER [--repeats 2]

RUN_DIR is a `transferkit detect fit` run (yolo or localize).  Both sides go through the same
``transferkit.tasks.detect.predict`` (files decoded each time, boxes mapped back to the original
pixels); only the network's engine differs: ``core.inference.Runner`` (ONNX Runtime on a CPU, the
default) or the module called eagerly under ``torch.inference_mode``.  Printed: images/s of each
(best of ``--repeats``, model loaded once, one warm-up batch), the ratio, and whether the boxes agree
(same count per image, smallest matched IoU, largest score difference).
"""

from __future__ import annotations

import argparse
import glob
import os
import time


class Eager:
    """The network called eagerly: what ``predict`` ran before the ONNX Runtime path."""

    def __init__(self, net):
        self.net = net

    def __call__(self, x):
        import torch

        with torch.inference_mode():
            return self.net(x).numpy()


def timed(predict, model, paths, repeats: int) -> tuple[float, list]:
    predict(model, paths[:8])  # warm-up (and, for ONNX Runtime, the export)
    best, out = float("inf"), []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = predict(model, paths)
        best = min(best, time.perf_counter() - t0)
    return len(paths) / best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("images")
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    import torch
    from torchvision.ops import box_iou

    from transferkit.tasks.detect.serving import load_model, predict

    paths = sorted(p for p in glob.glob(os.path.join(a.images, "*")) if p.lower().endswith((".jpg", ".jpeg", ".png")))
    ort_model = load_model(a.run)
    ort_rate, ort_out = timed(predict, ort_model, paths, a.repeats)
    eager_model = load_model(a.run)
    size = int(eager_model.config["detect"]["image_size"])
    eager_model.__dict__["_detect_runner"] = (size, Eager(eager_model.module.eval()))
    eager_rate, eager_out = timed(predict, eager_model, paths, a.repeats)
    same = sum(len(x["boxes"]) == len(y["boxes"]) for x, y in zip(ort_out, eager_out))
    ious, dscore = [], 0.0
    for x, y in zip(ort_out, eager_out):
        if x["boxes"] and len(x["boxes"]) == len(y["boxes"]):
            bx, by = torch.tensor([b["xyxy"] for b in x["boxes"]]), torch.tensor([b["xyxy"] for b in y["boxes"]])
            ious.append(float(box_iou(bx, by).max(1).values.min()))
            dscore = max(dscore, max(abs(b["score"] - c["score"]) for b, c in zip(x["boxes"], y["boxes"])))
    print(f"{len(paths)} images, {size} px: eager PyTorch {eager_rate:.1f} images/s, ONNX Runtime {ort_rate:.1f} "
          f"images/s: {ort_rate / eager_rate:.2f}x")
    print(f"agreement: same box count on {same}/{len(paths)} images, smallest matched IoU "
          f"{min(ious) if ious else float('nan'):.4f}, largest score difference {dscore:.4f} (scores rounded to 4 places)")


if __name__ == "__main__":
    main()
