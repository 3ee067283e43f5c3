"""Feature extraction as a user meets it: `transferkit features FOLDER --out f.npz` vs a naive script, whole processes.

Both sides are fresh Python processes timed from start to exit (interpreter
start-up, imports, model loading, decoding, the network, writing the output),
alternated ``--repeats`` times; the best time of each side is kept.  The naive
script is the tutorial's loop: it loads the same EfficientNet-Lite0 weights
(``transferkit.load``, so both use the bundled file), then PIL + torchvision
Resize/CenterCrop/ToTensor/Normalize in the main process, eager fp32, batch 32,
``torch.no_grad``, and saves the features with ``numpy.savez``.  transferkit
runs with an empty feature cache.

    python benchmarks/features_process.py ../shared/data/hymenoptera/train [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

NAIVE = r'''
import sys, glob, os
import numpy as np, torch
from PIL import Image
from torchvision import transforms
import transferkit
folder, out = sys.argv[1], sys.argv[2]
paths = sorted(p for p in glob.glob(os.path.join(folder, "**", "*"), recursive=True)
               if p.lower().endswith((".jpg", ".jpeg", ".png")))
model = transferkit.load("efficientnet_lite0").module.eval()
tf = transforms.Compose([transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
                         transforms.CenterCrop(224), transforms.ToTensor(),
                         transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
feats = []
with torch.no_grad():
    for i in range(0, len(paths), 32):
        x = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths[i:i + 32]])
        feats.append(model.forward_head(model.forward_features(x), pre_logits=True))
np.savez(out, features=torch.cat(feats).numpy(), paths=np.array(paths))
print(len(paths))
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    naive_t, tk_t = [], []
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "naive.py")
        with open(script, "w") as f:
            f.write(NAIVE)
        for r in range(args.repeats):
            env = {**os.environ, "TRANSFERKIT_CACHE": os.path.join(tmp, f"cache{r}"), "TRANSFERKIT_PROGRESS": "0"}
            t = time.perf_counter()
            subprocess.run([sys.executable, script, args.data, os.path.join(tmp, "naive.npz")], env=env, check=True,
                           capture_output=True)
            naive_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "transferkit", "features", args.data, "--out", os.path.join(tmp, "tk.npz")],
                           env=env, check=True, capture_output=True)
            tk_t.append(time.perf_counter() - t)
        import numpy as np

        a = np.load(os.path.join(tmp, "naive.npz"))["features"]
        b = np.load(os.path.join(tmp, "tk.npz"), allow_pickle=False)["features"]
    res = {"naive_s": [round(x, 1) for x in naive_t], "transferkit_s": [round(x, 1) for x in tk_t],
           "ratio_best": round(min(naive_t) / min(tk_t), 2), "naive_rows": int(a.shape[0]), "transferkit_rows": int(b.shape[0])}
    print(f"naive script: best {min(naive_t):.1f} s; transferkit features: best {min(tk_t):.1f} s; "
          f"ratio {min(naive_t) / min(tk_t):.2f}x")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
