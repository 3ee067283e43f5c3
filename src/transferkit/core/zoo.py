"""The model zoo as a table: what ``transferkit models`` prints.

One row per registered weight set (:mod:`transferkit.core.backbones`): where
it comes from (bundled pip package, cache, or a download/the hub), its ImageNet
top-1 with the source of that figure, its parameter count (recorded in the
registry; a test checks it against the architecture built on PyTorch's
``meta`` device, :func:`count_params`), its input size, and its feature-extraction throughput:
:func:`measure_images_per_s` measures it on this machine (``--measure``); the
figures recorded in the registry were measured by ``benchmarks/zoo_speed.py``
on the development host (BENCHMARKS.md).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from transferkit.core import backbones


@dataclass
class ZooRow:
    name: str
    architecture: str
    where: str            # "package NAME" / "cache" (offline) or "download" / "hub" (needs the network once)
    offline: bool
    params: int
    input_size: int
    top1: float | None
    top1_source: str
    images_per_s: float | None
    speed_source: str     # "measured now" or where the recorded figure comes from
    lecture: str
    description: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_params(architecture: str, num_classes: int = 1000) -> int:
    """Parameters of an architecture (built on the meta device: no memory, no weights)."""
    import torch

    with torch.device("meta"):
        module = backbones._build(architecture, num_classes)
    return sum(p.numel() for p in module.parameters())


def measure_images_per_s(name: str, batch: int = 32, seconds: float = 3.0, engine: str = "auto",
                         random_weights: bool = False) -> float:
    """Images per second of the model's feature extraction on this machine (decoding excluded).

    The network runs through the same :class:`~transferkit.core.inference.Runner`
    as ``transferkit features`` (ONNX Runtime on a CPU), on batches of
    ``batch`` random inputs of the model's size, after one warm-up batch, for
    about ``seconds``.  ``random_weights`` builds the architecture untrained
    (the speed does not depend on the values), for models not available offline.
    """
    import torch

    from transferkit.core.inference import OutputHead, Runner

    entry = backbones.registered_weights()[name]
    module = backbones._build(entry.architecture, entry.num_classes).eval() if random_weights else \
        backbones.resolve(name).module
    shape = entry.preprocessing.input_size
    runner = Runner(OutputHead.make(module, "pre_logits"), shape, engine=engine)
    x = torch.randn(batch, *shape)
    runner(x)  # warm-up
    n, t0 = 0, time.perf_counter()
    while True:
        runner(x)
        n += batch
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return n / dt


def rows(measure: bool = False) -> list[ZooRow]:
    """Every registered weight set, offline ones first (measured now when ``measure``)."""
    ready = {name: where for name, where, _ in backbones.offline_ready()}
    out = []
    for entry in backbones.registered_weights().values():
        offline = entry.name in ready
        where = ready.get(entry.name) or ("download" if entry.url else "hub")
        ips, src = entry.images_per_s, (backbones.SPEED_HOST if entry.images_per_s else "")
        if measure and offline:
            ips, src = round(measure_images_per_s(entry.name), 1), "measured now"
        params = entry.params or count_params(entry.architecture, entry.num_classes)
        out.append(ZooRow(entry.name, entry.architecture, where, offline, params,
                          entry.preprocessing.input_size[1], entry.top1, entry.top1_source, ips, src, entry.lecture,
                          entry.description))
    return sorted(out, key=lambda r: (not r.offline, bool(r.lecture), r.params))


def table(zoo: list[ZooRow]) -> str:
    """The rows as aligned text, with the sources of the top-1 figures as numbered notes."""
    sources: list[str] = []
    head = ("model", "offline", "params", "input", "ImageNet top-1", "img/s", "lecture model")
    body = []
    for r in zoo:
        if r.top1 is not None and r.top1_source not in sources:
            sources.append(r.top1_source)
        top1 = f"{r.top1:.1f}% [{sources.index(r.top1_source) + 1}]" if r.top1 is not None else "-"
        ips = f"{r.images_per_s:.0f}" + ("" if r.speed_source == "measured now" else "*") if r.images_per_s else "-"
        where = "pip package" if r.where.startswith("package") else r.where
        body.append((r.name, f"yes ({where})" if r.offline else f"no ({where})", f"{r.params:,}",
                     f"{r.input_size}", top1, ips, r.lecture or ""))
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(head, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)).rstrip() for b in body]
    lines.append("")
    lines += [f"[{i + 1}] {s}" for i, s in enumerate(sources)]
    if any(r.images_per_s and r.speed_source != "measured now" for r in zoo):
        lines.append(f"* img/s: feature extraction (ONNX Runtime, batch 32, decoding excluded) recorded on the "
                     f"{backbones.SPEED_HOST}; `transferkit models --measure` measures the offline ones here.")
    return "\n".join(lines)
