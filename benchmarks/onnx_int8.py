"""Would an int8 ONNX Runtime engine be worth it?  Static int8 quantisation of EfficientNet-Lite0 vs fp32, one process.

The network (logits) is exported to ONNX as transferkit's engine does, then
quantised with ONNX Runtime's ``quantize_static`` (QDQ, per-channel int8
weights, uint8 activations; the stem convolution and the classifier stay fp32),
calibrated on the first ``--calib`` images of DATA.  Both sessions run the same
preprocessed batches (decoding excluded), alternated; prints images/s of each
and the top-1 agreement of the int8 logits with the fp32 ones on all images
(target of issue 20: >= 99%).

    python benchmarks/onnx_int8.py ../shared/data/hymenoptera/train [--method minmax|percentile]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--calib", type=int, default=128)
    ap.add_argument("--method", default="minmax", choices=("minmax", "percentile"))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    import transferkit
    from transferkit.core.images import list_images
    from transferkit.core.inference import OutputHead, export_onnx_bytes, iter_batches

    model = transferkit.load("efficientnet_lite0")
    X = np.concatenate([b.numpy() for _, b in iter_batches(list_images([args.data]), model.transform(), 32, 0)])
    with tempfile.TemporaryDirectory() as tmp:
        fp32, pre, int8 = (os.path.join(tmp, f) for f in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        with open(fp32, "wb") as f:
            f.write(export_onnx_bytes(OutputHead.make(model.module, "logits"), torch.zeros(2, *X.shape[1:])))
        quant_pre_process(fp32, pre)
        matmuls = [n.name for n in onnx.load(pre).graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.it = iter([{"input": X[i:i + 8]} for i in range(0, min(args.calib, len(X)), 8)])

            def get_next(self):
                return next(self.it, None)

        method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}[args.method]
        quantize_static(pre, int8, Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=True, calibrate_method=method,
                        nodes_to_exclude=[matmuls[0], matmuls[-1]], extra_options={"CalibPercentile": 99.99})
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sessions = {name: ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
                    for name, path in (("fp32", fp32), ("int8", int8))}
        times: dict[str, list[float]] = {"fp32": [], "int8": []}
        outs = {}
        for _ in range(args.repeats):
            for name, s in sessions.items():
                t = time.perf_counter()
                outs[name] = np.concatenate([s.run(None, {"input": X[i:i + 32]})[0] for i in range(0, len(X), 32)])
                times[name].append(time.perf_counter() - t)
    agree = float((outs["fp32"].argmax(1) == outs["int8"].argmax(1)).mean())
    ips = {k: len(X) / min(v) for k, v in times.items()}
    print(f"fp32 {ips['fp32']:.1f} img/s, int8 {ips['int8']:.1f} img/s ({ips['int8'] / ips['fp32']:.2f}x); "
          f"top-1 agreement {agree:.2%} on {len(X)} images ({args.calib} of them used for calibration)")
    print(json.dumps({"fp32_img_per_s": round(ips["fp32"], 1), "int8_img_per_s": round(ips["int8"], 1),
                      "ratio": round(ips["int8"] / ips["fp32"], 2), "top1_agreement": round(agree, 4),
                      "images": len(X), "calibration_images": args.calib, "method": args.method}))


if __name__ == "__main__":
    main()
