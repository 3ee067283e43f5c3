"""A layer table with output shapes, parameters and multiply-accumulates (Keras' ``model.summary()``).

How the numbers are measured, for any ``nn.Module`` (the project's or timm's):

* output shapes: forward hooks on every module, during one forward pass on a
  zero input of one sample;
* multiply-accumulates (MACs): ``torch.utils.flop_counter.FlopCounterMode``
  counts the FLOPs of convolutions and matrix products (``mm``, ``addmm``,
  ``bmm``, attention...) during that pass and attributes them to every module
  on the call stack; MACs = FLOPs / 2.  Element-wise work (batch norm,
  activations, pooling, additions) is not counted, as in most papers' tables;
* parameters: each tensor is counted once, at the module that owns it.

A row is a leaf module (or, with ``depth``, a module at that depth with
everything below it folded in).  A module with children that also owns
parameters or does its own matrix work (a ViT's class token, an attention
product computed in ``forward``) gets a row of its own marked ``(own)``, so
the totals are exactly the sums of the rows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from transferkit.errors import TransferkitError


@dataclass
class LayerRow:
    """One row of the table; ``output_shape`` excludes the batch dimension (None: never called)."""

    name: str
    kind: str
    depth: int
    output_shape: list[int] | None
    params: int
    trainable: int
    macs: int
    calls: int


@dataclass
class Summary:
    """The table and its totals (``total_*`` are measured on the whole model, independently of the rows)."""

    model: str
    input_shape: list[int]
    output_shape: list[int] | None
    rows: list[LayerRow]
    total_params: int
    trainable_params: int
    total_macs: int
    param_bytes: int
    buffer_bytes: int
    notes: list[str] = field(default_factory=list)

    @property
    def non_trainable_params(self) -> int:
        return self.total_params - self.trainable_params

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["non_trainable_params"] = self.non_trainable_params
        return d

    def table(self) -> str:
        """The table as text, for a terminal."""
        head = ("Layer (type)", "Output shape", "Param #", "MACs")
        body = []
        for r in self.rows:
            label = f"{r.name or '(root)'} ({r.kind})"
            shape = "-" if r.output_shape is None else "(" + ", ".join(str(s) for s in r.output_shape) + ")"
            if r.calls > 1:
                shape += f" x{r.calls}"
            body.append((label, shape, f"{r.params:,}", human(r.macs)))
        widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(
                c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
            ).rstrip()

        rule = "=" * len(line(head))
        inp = "x".join(str(s) for s in self.input_shape)
        out = "x".join(str(s) for s in self.output_shape) if self.output_shape else "?"
        lines = [f"{self.model}: input {inp} -> output {out}", rule, line(head), "-" * len(rule)]
        lines += [line(b) for b in body]
        lines += [
            rule,
            f"Total params:         {self.total_params:,} ({self.param_bytes / 2**20:.2f} MiB)",
            f"Trainable params:     {self.trainable_params:,}",
            f"Non-trainable params: {self.non_trainable_params:,}",
            f"Total MACs:           {self.total_macs:,} ({human(self.total_macs)}) per {inp} sample",
            f"Buffers:              {self.buffer_bytes / 2**20:.2f} MiB (batch-norm statistics and the like)",
        ]
        lines += [f"Note: {n}" for n in self.notes]
        return "\n".join(lines)


def human(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


def _tracker_names(model: Any) -> dict[int, str]:
    """The names FlopCounterMode's ModuleTracker gives modules: root class name, then dotted child names."""
    names: dict[int, str] = {id(model): type(model).__name__}
    seen: set[int] = set()

    def walk(mod: Any) -> None:
        if id(mod) in seen:
            return
        seen.add(id(mod))
        for child_name, child in mod.named_children():
            names[id(child)] = f"{names[id(mod)]}.{child_name}"
            walk(child)

    walk(model)
    return names


def summarize(model: Any, input_shape: Sequence[int], depth: int | None = None, name: str | None = None) -> Summary:
    """Run one zero sample of ``input_shape`` (C, H, W) through ``model`` and tabulate its layers.

    Args:
        depth: fold everything below this depth into its ancestor (None: every leaf module).
        name: shown in the table header (default: the model's class name).

    Raises:
        TransferkitError: the model cannot take that input.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    if depth is not None and depth < 1:
        raise TransferkitError(f"--depth must be 1 or more (got {depth}).")
    model = model.eval()
    modules = list(model.named_modules())  # first name of each module object, definition order
    order: dict[int, int] = {}
    shapes: dict[int, list[int] | None] = {}
    calls: dict[int, int] = {}

    def pre_hook(mod, _inputs):
        order.setdefault(id(mod), len(order))

    def post_hook(mod, _inputs, output):
        calls[id(mod)] = calls.get(id(mod), 0) + 1
        out = output[0] if isinstance(output, (tuple, list)) and output else output
        if isinstance(out, dict) and out:
            out = next(iter(out.values()))
        shapes[id(mod)] = list(out.shape[1:]) if isinstance(out, torch.Tensor) else None

    handles = []
    for _, mod in modules:
        handles.append(mod.register_forward_pre_hook(pre_hook))
        handles.append(mod.register_forward_hook(post_hook))
    x = torch.zeros(1, *input_shape)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            y = model(x)
    except (RuntimeError, ValueError, AssertionError, IndexError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TransferkitError(
            f"{name or type(model).__name__} cannot take an input of shape {tuple(input_shape)} ({first}); "
            "try another --input C,H,W."
        ) from None
    finally:
        for h in handles:
            h.remove()
    if isinstance(y, (tuple, list)):
        y = y[0]
    out_shape = list(y.shape[1:]) if isinstance(y, torch.Tensor) else None

    flop_counts = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}
    tracker = _tracker_names(model)

    def flops_of(mod: Any) -> int:
        return flop_counts.get(tracker.get(id(mod), ""), 0)

    seen_params: set[int] = set()

    def take(params) -> tuple[int, int]:
        n = t = 0
        for p in params:
            if id(p) in seen_params:
                continue
            seen_params.add(id(p))
            n += p.numel()
            t += p.numel() if p.requires_grad else 0
        return n, t

    rows: list[tuple[float, LayerRow]] = []
    ids_seen: set[int] = set()
    for qname, mod in modules:
        ids_seen.add(id(mod))
        d = 0 if qname == "" else qname.count(".") + 1
        if depth is not None and d > depth:
            continue
        children = list(mod.children())
        position = order.get(id(mod), float("inf"))
        if not children or (depth is not None and d == depth):
            n, t = take(mod.parameters())
            rows.append((position, LayerRow(qname, type(mod).__name__, d, shapes.get(id(mod)), n, t,
                                            flops_of(mod) // 2, calls.get(id(mod), 0))))
            continue
        # a module with children: a row only for what it owns or computes itself
        n, t = take(mod.parameters(recurse=False))
        own_flops = flops_of(mod) - sum(flops_of(c) for c in {id(c): c for c in children}.values())
        if n or own_flops > 0:
            rows.append((position, LayerRow(qname, f"{type(mod).__name__} (own)", d, shapes.get(id(mod)), n, t,
                                            own_flops // 2, calls.get(id(mod), 0))))
    # stable sort: modules in the order they first ran; modules never called keep definition order, last
    ordered = [r for _, r in sorted(enumerate(rows), key=lambda ir: (ir[1][0], ir[0]))]
    ordered_rows = [r for _, r in ordered]

    all_params = {id(p): p for p in model.parameters()}.values()
    total = sum(p.numel() for p in all_params)
    trainable = sum(p.numel() for p in all_params if p.requires_grad)
    notes = []
    never = [r.name for r in ordered_rows if r.calls == 0 and r.params]
    if never:
        notes.append(f"{len(never)} module(s) with parameters did not run in this forward pass: {', '.join(never[:5])}")
    bn_channels = sum(int(m.running_mean.numel()) for _, m in modules
                      if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None)
    if bn_channels:
        notes.append(keras_note(total, bn_channels))
    return Summary(
        model=name or type(model).__name__,
        input_shape=list(input_shape),
        output_shape=out_shape,
        rows=ordered_rows,
        total_params=total,
        trainable_params=trainable,
        total_macs=counter.get_total_flops() // 2,
        param_bytes=sum(p.numel() * p.element_size() for p in all_params),
        buffer_bytes=sum(b.numel() * b.element_size() for b in model.buffers()),
        notes=notes,
    )


def keras_note(params: int, bn_channels: int) -> str:
    """How this count relates to the one Keras' ``model.summary()`` prints for the same network.

    Keras counts BatchNorm's moving mean and variance as (non-trainable)
    parameters; PyTorch keeps them as buffers.  And Keras' Inception v3 and
    Inception-ResNet v2 build their BatchNorm layers with ``scale=False`` (no
    gamma), so per channel Keras has 3 numbers (beta, mean, variance) where
    this table has 2 (gamma, beta): their Keras totals are this total plus one
    per BatchNorm channel (23,834,568 + 17,216 = 23,851,784 and
    55,843,464 + 30,272 = 55,873,736, the lectures' figures).
    """
    return (f"Keras' model.summary() would count BatchNorm's moving mean and variance as parameters too: "
            f"{params:,} + 2 x {bn_channels:,} BatchNorm channels = {params + 2 * bn_channels:,}; for networks whose "
            f"BatchNorm has no scale (Keras' Inception v3 and Inception-ResNet v2 use scale=False) the Keras count is "
            f"{params:,} + {bn_channels:,} = {params + bn_channels:,}.")


def parse_input(text: str) -> tuple[int, int, int]:
    """``"3,224,224"`` (or ``3x224x224``) -> (3, 224, 224)."""
    parts = [p for p in text.replace("x", ",").replace(" ", "").split(",") if p]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise TransferkitError(f"--input must be C,H,W with three positive integers, e.g. 3,224,224 (got {text!r}).")
    return values  # type: ignore[return-value]


def macs_of(model: Any, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass on one sample (same counting as :func:`summarize`)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, *input_shape))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
