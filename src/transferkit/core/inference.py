"""Batched inference over image files, as fast as the machine allows.

The pipeline is the same for every task: files are decoded and preprocessed in
DataLoader workers (bad files are reported, not fatal), batches go through a
:class:`Runner`, which picks an engine:

* ``onnx`` (CPU default): the network exported once, in memory, to ONNX and
  run by ONNX Runtime.  On CPUs without bf16 support this is the fastest
  fp32 path we measured (see BENCHMARKS.md) and its outputs match PyTorch's.
* ``torch``: ``inference_mode`` + channels_last, with bf16 autocast on GPUs and
  on CPUs that support bf16 natively (elsewhere bf16 is slower, so it is off).
* ``eager``: the naive tutorial baseline (fp32, ``no_grad``); for benchmarks.
"""

from __future__ import annotations

import io
import os
import sys
import warnings
from typing import Any, Iterator, Sequence

from transferkit.core.images import SkipLog, read_image, read_image_uint8
from transferkit.errors import ImageReadError, TransferkitError

ENGINES = ("auto", "onnx", "torch", "eager")


def cpu_supports_bf16() -> bool:
    """True when oneDNN has native bf16 kernels on this CPU (AVX512-BF16 / AMX)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def pick_device(device: str = "auto"):
    """``auto`` -> CUDA when available, else CPU; otherwise the named device."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise TransferkitError(f"Unknown device {device!r}; use auto, cpu, cuda or cuda:N.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TransferkitError("--device cuda was asked for, but no CUDA GPU is available.")
    return dev


# --------------------------------------------------------------------------- outputs of a network


def embed(module: Any, x: Any, layer: str = "pre_logits") -> Any:
    """Feature vectors of a batch.

    ``pooled`` is the globally pooled output of the last feature map;
    ``pre_logits`` is what feeds the classifier (pooled, plus any head
    norm/projection the architecture has).  Modules with an ``embed`` method
    (the project's own networks) answer for themselves.
    """
    if hasattr(module, "embed"):
        return module.embed(x, layer)
    if layer not in ("pooled", "pre_logits"):
        raise TransferkitError(f"Unknown feature layer {layer!r}; use pre_logits or pooled.")
    feats = module.forward_features(x)
    if layer == "pre_logits":
        return module.forward_head(feats, pre_logits=True)
    pool = getattr(module, "global_pool", None)
    if callable(pool):
        out = pool(feats)
    elif feats.ndim == 4:  # NCHW map -> mean over H, W
        out = feats.mean(dim=(2, 3))
    elif feats.ndim == 3:  # tokens (N, L, D) -> mean over tokens
        out = feats.mean(dim=1)
    else:
        out = feats
    return out.flatten(1)


class OutputHead:
    """Factory for the tiny wrapper that makes a network return what we want."""

    @staticmethod
    def make(module: Any, output: str) -> Any:
        import torch

        class _Head(torch.nn.Module):
            def __init__(self, inner: Any, what: str):
                super().__init__()
                self.inner, self.what = inner, what

            def forward(self, x):  # x: (N, 3, H, W) -> (N, classes) probabilities or (N, D) features
                if self.what == "probs":
                    return torch.softmax(self.inner(x).float(), dim=-1)
                if self.what == "logits":
                    return self.inner(x)
                return embed(self.inner, x, self.what)

        return _Head(module, output).eval()


# --------------------------------------------------------------------------- engines


def export_onnx_bytes(module: Any, example: Any) -> bytes:
    """Export ``module`` to ONNX in memory with a dynamic batch dimension."""
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            buf,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return buf.getvalue()


class Runner:
    """Runs ``head`` (an ``nn.Module``) on batches and returns float32 NumPy arrays.

    Args:
        head: the module to run (e.g. from :meth:`OutputHead.make`).
        input_shape: (C, H, W) of one input, used for the ONNX export.
        device: ``auto``, ``cpu``, ``cuda``...
        engine: ``auto`` (ONNX Runtime on CPU, torch on GPU), ``onnx``,
            ``torch`` or ``eager``.
    """

    def __init__(self, head: Any, input_shape: Sequence[int], device: str = "auto", engine: str = "auto"):
        import torch

        if engine not in ENGINES:
            raise TransferkitError(f"Unknown engine {engine!r}; use one of {', '.join(ENGINES)}.")
        self.device = pick_device(device)
        self.head = head.eval()
        if engine == "auto":
            engine = "onnx" if self.device.type == "cpu" and _has_onnxruntime() else "torch"
        if engine == "onnx" and self.device.type != "cpu":
            raise TransferkitError("The onnx engine runs on the CPU; use --engine torch on a GPU.")
        self.engine = engine
        self.bf16 = False
        if engine == "onnx":
            try:
                self._session = self._onnx_session(torch.zeros(2, *input_shape))
            except Exception as err:  # an architecture the exporter cannot handle
                print(f"note: ONNX export failed ({type(err).__name__}); using the torch engine", file=sys.stderr)
                self.engine = engine = "torch"
        if engine in ("torch", "eager"):
            self.head = self.head.to(self.device)
            if engine == "torch":
                self.head = self.head.to(memory_format=torch.channels_last)
                self.bf16 = self.device.type == "cuda" or cpu_supports_bf16()

    def _onnx_session(self, example: Any):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        return ort.InferenceSession(export_onnx_bytes(self.head, example), opts, providers=["CPUExecutionProvider"])

    def __call__(self, x: Any):
        import numpy as np
        import torch

        if self.engine == "onnx":
            arr = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)
            return self._session.run(None, {"input": np.ascontiguousarray(arr, dtype=np.float32)})[0]
        if self.engine == "eager":
            with torch.no_grad():
                return self.head(x.to(self.device)).float().cpu().numpy()
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.head(x).float().cpu().numpy()


def _has_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- reading batches


class ImageItems:
    """A torch Dataset over file paths and/or in-memory PIL images (``(name, image)``).

    Each item is ``(tensor or None, index, error or None)``: a bad file does not
    stop the batch, it travels back as an error to be reported in order.
    """

    def __init__(self, items: Sequence[Any], transform: Any, draft_size: tuple[int, int] | None = None):
        self.items, self.transform, self.draft_size = list(items), transform, draft_size

    def __len__(self) -> int:
        return len(self.items)

    def name(self, i: int) -> str:
        item = self.items[i]
        return item[0] if isinstance(item, tuple) else os.fspath(item)

    def __getitem__(self, i: int):
        item = self.items[i]
        try:
            if isinstance(item, tuple):
                img = item[1]
            elif getattr(self.transform, "accepts_uint8", False):  # straight to a uint8 tensor (faster JPEG decoding)
                img = read_image_uint8(item, self.draft_size)
            else:
                img = read_image(item, self.draft_size)
            return self.transform(img), i, None
        except ImageReadError as err:
            return None, i, err


def _collate(batch):
    import torch

    good = [b for b in batch if b[0] is not None]
    tensor = torch.stack([b[0] for b in good]) if good else None
    return tensor, [b[1] for b in good], [b[2] for b in batch if b[2] is not None]


def default_workers(n_items: int, batch_size: int) -> int:
    """DataLoader workers: none for a handful of images (start-up costs more), else up to 2."""
    if n_items < 2 * batch_size:
        return 0
    return max(1, min(2, (os.cpu_count() or 1)))


def iter_batches(
    items: Sequence[Any],
    transform: Any,
    batch_size: int = 32,
    workers: int | None = None,
    skips: SkipLog | None = None,
    draft_size: tuple[int, int] | None = None,
) -> Iterator[tuple[list[int], Any]]:
    """Yield ``(indices, batch tensor)`` over ``items``, sending bad files to ``skips``."""
    import torch

    dataset = ImageItems(items, transform, draft_size)
    workers = default_workers(len(dataset), batch_size) if workers is None else workers
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        persistent_workers=False,
    )
    skips = skips or SkipLog()
    for tensor, indices, errors in loader:
        for err in errors:
            skips.add(err)
        if tensor is not None:
            yield indices, tensor


def draft_for(preprocessing: Any) -> tuple[int, int]:
    """The JPEG draft size that still leaves the resize step enough pixels."""
    s = preprocessing.resize_size
    return (s, s)
