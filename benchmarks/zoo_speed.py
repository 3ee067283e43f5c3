"""Feature-extraction images/s of every registered model on this machine (the ``img/s`` of ``transferkit models``).

Each network runs through transferkit's Runner (ONNX Runtime on a CPU) on
batches of 32 random inputs of its own size, after a warm-up batch, for about
``--seconds``; decoding is excluded (see features_throughput.py for that).
Models not available offline run with random weights: speed does not depend
on the values.

    python benchmarks/zoo_speed.py [--seconds 3] [--names efficientnet_lite0,vgg19.tv_in1k]
"""

from __future__ import annotations

import argparse
import json
import os
import platform


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--names", help="comma-separated registry names (default: all)")
    args = ap.parse_args()

    import torch

    from transferkit.core import backbones
    from transferkit.core.zoo import count_params, measure_images_per_s

    ready = {n for n, _, _ in backbones.offline_ready()}
    names = args.names.split(",") if args.names else list(backbones.registered_weights())
    for name in names:
        entry = backbones.registered_weights()[name]
        ips = measure_images_per_s(name, seconds=args.seconds, random_weights=name not in ready)
        print(json.dumps({"name": name, "images_per_s": round(ips, 1), "input": entry.preprocessing.input_size[1],
                          "params": count_params(entry.architecture), "weights": "real" if name in ready else "random",
                          "torch_threads": torch.get_num_threads(),
                          "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus"}), flush=True)


if __name__ == "__main__":
    main()
