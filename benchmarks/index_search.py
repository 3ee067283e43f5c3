"""Exact NumPy search vs faiss HNSW behind transferkit's index interface: query time, build time, recall.

    flock /tmp/transferkit-heavy.lock python benchmarks/index_search.py --dim 1280 --sizes 10000,50000,100000

Vectors are random unit vectors with clustered structure (like image embeddings:
many near neighbours). For each collection size both backends answer the same
batch of queries (k=10); recall@10 of HNSW is measured against the exact answer.
This is what the automatic switch (``ANN_THRESHOLD``) is based on.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def clustered(n: int, d: int, seed: int) -> np.ndarray:
    from transferkit.tasks.index.embed import l2_normalise

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(1, n // 50), d)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.35 * rng.normal(size=(n, d)).astype(np.float32)
    return l2_normalise(x)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=1280, help="embedding size (1280: efficientnet_lite0 features)")
    ap.add_argument("--sizes", default="10000,50000,100000", help="collection sizes")
    ap.add_argument("--queries", type=int, default=200, help="queries per size, answered one at a time")
    ap.add_argument("-k", type=int, default=10)
    args = ap.parse_args()

    from transferkit.tasks.index.store import ExactBackend, FaissBackend

    print(f"dim {args.dim}, k {args.k}, {args.queries} single queries per size")
    for n in [int(s) for s in args.sizes.split(",")]:
        emb = clustered(n, args.dim, 0)
        rng = np.random.default_rng(1)
        q = emb[rng.integers(0, n, args.queries)] + 0.05 * rng.normal(size=(args.queries, args.dim)).astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        exact = ExactBackend(emb)
        t = time.perf_counter()
        truth = [exact.search(q[i:i + 1], args.k)[1][0] for i in range(len(q))]
        t_np = (time.perf_counter() - t) / len(q)
        t = time.perf_counter()
        ann = FaissBackend(emb)
        t_build = time.perf_counter() - t
        t = time.perf_counter()
        got = [ann.search(q[i:i + 1], args.k)[1][0] for i in range(len(q))]
        t_fa = (time.perf_counter() - t) / len(q)
        recall = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(truth, got)])
        print(f"N={n:>7}: numpy exact {t_np * 1e3:7.2f} ms/query | faiss HNSW {t_fa * 1e3:6.2f} ms/query "
              f"(x{t_np / t_fa:.1f} faster, recall@{args.k} {recall:.3f}, build {t_build:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
