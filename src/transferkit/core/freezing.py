"""Freezing the bottom of a backbone, and discriminative (per-layer) learning rates.

A backbone is cut into **stages**, ordered from the input (bottom) to the
output (top).  For a timm model the stages are timm's own coarse parameter
groups (``model.group_matcher(coarse=True)``): for EfficientNet-Lite0 the stem
then the seven block stages (the head convolution joins the last one), for a
ResNet the stem then ``layer1..4``, for a ViT the embeddings then each block.
For other modules (the project's registered architectures) the stages are the
top-level children that hold parameters, in order (a lone container child is
opened, so ``features: Sequential`` yields its layers).

Everything here works on stages, so the same numbers mean the same thing
everywhere a user types them:

* :func:`freeze_bottom` / ``--freeze-to N``: freeze the first ``N`` stages
  (``None``: all of them; a negative ``N`` counts from the top, ``-1`` leaves
  only the last stage trainable).
* :func:`keep_frozen_bn_eval`: a frozen BatchNorm must stay in eval mode (its
  running statistics must not drift with the new data while its affine weights
  are fixed; Keras's well-known fine-tuning pitfall).  Call it after every
  ``module.train()``, e.g. by overriding ``train`` (see :class:`FrozenBNMixin`).
* :func:`layer_lr_groups`: optimiser parameter groups, one per stage plus one
  for the new head, with learning rates that shrink towards the input, either
  geometrically by ``layer_decay`` per stage (``lr * decay**depth``) or spread
  geometrically over a ``lo:hi`` range (``fastai``'s ``slice(lo, hi)``).
* :func:`frozen_stages_at`: how many stages stay frozen at a given epoch of
  gradual unfreezing.

Example::

    stages = backbone_stages(backbone)                  # [Stage('stem', ...), Stage('blocks.0', ...), ...]
    freeze_bottom(backbone, 3)                          # stem, blocks.0, blocks.1 frozen
    groups = layer_lr_groups(backbone, head, lr=1e-3, layer_decay=0.7)
    opt = torch.optim.AdamW(groups)                     # group["name"] says which stage it is
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from transferkit.errors import TransferkitError

FROZEN_ATTR = "_transferkit_frozen"


@dataclass
class Stage:
    """One stage of a backbone: a name and the parameter names (relative to the backbone) it holds."""

    name: str
    param_names: list[str] = field(default_factory=list)

    def parameters(self, module: Any) -> list[Any]:
        """The stage's ``nn.Parameter`` objects in ``module``."""
        named = dict(module.named_parameters())
        return [named[n] for n in self.param_names]


# --------------------------------------------------------------------------- stages


def _stage_name(names: Sequence[str], depth: int = 2) -> str:
    """A short name for a group of parameter names: their shared module path, at most ``depth`` levels deep.

    ``blocks.3.0.conv.weight`` + ``blocks.3.1.bn.bias`` -> ``blocks.3``;
    a group spanning modules -> ``blocks.6+conv_head+bn2``.
    """
    paths = [n.split(".")[:-1] or [n] for n in names]
    prefix: list[str] = []
    for parts in zip(*paths):
        if all(p == parts[0] for p in parts):
            prefix.append(parts[0])
        else:
            break
    if prefix:
        return ".".join(prefix[:depth])
    tops = list(dict.fromkeys(".".join(p[:depth]) for p in paths))
    return "+".join(tops[:3]) + ("+..." if len(tops) > 3 else "")


def _timm_stages(module: Any, fine: bool) -> list[Stage] | None:
    matcher_fn = getattr(module, "group_matcher", None)
    if not callable(matcher_fn):
        return None
    try:
        from timm.models import group_parameters

        names = [n for n, _ in module.named_parameters()]
        groups = group_parameters(module, matcher_fn(coarse=not fine))
    except Exception:  # a model whose matcher does not describe its parameters
        return None
    stages = [Stage(_stage_name(g, 3 if fine else 2), list(g)) for _, g in sorted(groups.items()) if g]
    if sum(len(s.param_names) for s in stages) != len(names):
        return None
    if stages and stages[0].name.startswith(("conv_stem", "conv1", "stem", "patch_embed", "cls_token", "pos_embed")):
        stages[0].name = "stem"
    return stages


def _child_stages(module: Any) -> list[Stage]:
    """Top-level children holding parameters, in order; a single container child is opened."""
    prefix = ""
    current = module
    while True:
        kids = [(n, c) for n, c in current.named_children() if any(True for _ in c.parameters())]
        own = [n for n, _ in current.named_parameters(recurse=False)]
        if len(kids) == 1 and not own and any(True for _ in kids[0][1].children()):
            prefix += kids[0][0] + "."
            current = kids[0][1]
            continue
        break
    stages: list[Stage] = []
    own = [prefix + n for n, _ in current.named_parameters(recurse=False)]
    if own:
        stages.append(Stage(prefix.rstrip(".") or "params", own))
    for name, child in current.named_children():
        pnames = [f"{prefix}{name}.{n}" for n, _ in child.named_parameters()]
        if pnames:
            stages.append(Stage(f"{prefix}{name}", pnames))
    return stages


def backbone_stages(module: Any, fine: bool = False) -> list[Stage]:
    """The backbone's stages, bottom (input side) first.

    Args:
        module: a timm model (its ``group_matcher`` is used) or any ``nn.Module``.
        fine: timm's fine-grained groups (each block) instead of the coarse
            stages.  Ignored for modules without ``group_matcher``.
    """
    stages = _timm_stages(module, fine)
    if stages is None:
        stages = _child_stages(module)
    if not stages:
        raise TransferkitError(f"{type(module).__name__} has no trainable parameters to divide into stages.")
    seen: dict[str, int] = {}
    for s in stages:  # unique names (Lightning's learning-rate monitor requires them)
        seen[s.name] = seen.get(s.name, 0) + 1
        if seen[s.name] > 1:
            s.name = f"{s.name}#{seen[s.name]}"
    return stages


# --------------------------------------------------------------------------- freezing


def resolve_freeze_to(n: int | None, n_stages: int) -> int:
    """Number of bottom stages to freeze for ``--freeze-to n`` (None: all; negative: from the top)."""
    if n is None:
        return n_stages
    if n < 0:
        n = n_stages + n
        if n < 0:
            raise TransferkitError(f"--freeze-to {n - n_stages} leaves fewer than zero stages frozen: the backbone has {n_stages}.")
        return n
    if n > n_stages:
        raise TransferkitError(f"--freeze-to {n} is more than the backbone's {n_stages} stages.")
    return n


def set_frozen(module: Any, stages: Sequence[Stage], n_frozen: int) -> None:
    """Freeze the first ``n_frozen`` stages of ``module`` and make the others trainable.

    ``requires_grad`` is switched on the parameters, and every submodule lying
    wholly inside a frozen stage is marked, so :func:`keep_frozen_bn_eval`
    also catches BatchNorm layers without affine parameters.
    """
    named = dict(module.named_parameters())
    frozen_names: set[str] = set()
    for i, stage in enumerate(stages):
        frozen = i < n_frozen
        for n in stage.param_names:
            named[n].requires_grad_(not frozen)
            if frozen:
                frozen_names.add(n)
    # Mark submodules: one with parameters is frozen when all of them are; a parameter-less
    # BatchNorm (affine=False) follows the nearest parameterised module registered before it.
    last_frozen = False
    for mname, sub in module.named_modules():
        direct = [f"{mname}.{p}" if mname else p for p, _ in sub.named_parameters(recurse=False)]
        if direct:
            last_frozen = all(p in frozen_names for p in direct)
        every = [f"{mname}.{p}" if mname else p for p, _ in sub.named_parameters()]
        if every:
            setattr(sub, FROZEN_ATTR, all(p in frozen_names for p in every))
        elif _is_batchnorm(sub):
            setattr(sub, FROZEN_ATTR, last_frozen)


def freeze_bottom(module: Any, n: int | None = None, fine: bool = False) -> list[Stage]:
    """Freeze the bottom ``n`` stages of ``module`` (see :func:`resolve_freeze_to`); returns the frozen stages.

    Frozen BatchNorm layers are put in eval mode at once; keep them there
    with :func:`keep_frozen_bn_eval` after each ``train()`` call.
    """
    stages = backbone_stages(module, fine)
    k = resolve_freeze_to(n, len(stages))
    set_frozen(module, stages, k)
    keep_frozen_bn_eval(module)
    return stages[:k]


def unfreeze_all(module: Any) -> None:
    """Make every parameter of ``module`` trainable again."""
    for p in module.parameters():
        p.requires_grad_(True)
    for sub in module.modules():
        if hasattr(sub, FROZEN_ATTR):
            setattr(sub, FROZEN_ATTR, False)


def _is_batchnorm(m: Any) -> bool:
    from torch.nn.modules.batchnorm import _BatchNorm

    return isinstance(m, _BatchNorm)


def keep_frozen_bn_eval(module: Any) -> int:
    """Put every frozen BatchNorm of ``module`` in eval mode; returns how many.

    A BatchNorm is frozen when all its parameters have ``requires_grad=False``
    (or :func:`set_frozen` marked it).  In eval mode it normalises with its
    pretrained running statistics and does not update them.
    """
    n = 0
    for m in module.modules():
        if not _is_batchnorm(m):
            continue
        params = list(m.parameters(recurse=False))
        frozen = all(not p.requires_grad for p in params) if params else bool(getattr(m, FROZEN_ATTR, False))
        if frozen and m.training:
            m.eval()
            n += 1
    return n


class FrozenBNMixin:
    """Mix into an ``nn.Module`` so that ``train()`` leaves frozen BatchNorm layers in eval mode.

    ``class Net(FrozenBNMixin, nn.Module): ...`` -- Lightning calls
    ``train()`` at the start of every epoch, and this keeps the rule in force.
    """

    def train(self, mode: bool = True):  # type: ignore[override]
        super().train(mode)  # type: ignore[misc]
        if mode:
            keep_frozen_bn_eval(self)  # type: ignore[arg-type]
        return self


def trainable_state(module: Any) -> dict[str, bool]:
    """``{parameter name: requires_grad}``, e.g. to check what a strategy froze."""
    return {n: p.requires_grad for n, p in module.named_parameters()}


# --------------------------------------------------------------------------- gradual unfreezing


def frozen_stages_at(epoch: int, n_stages: int, head_epochs: int, mode: str = "all", stage_epochs: int = 1,
                     frozen_at_start: int | None = None) -> int:
    """Stages still frozen at ``epoch`` (0-based) of gradual unfreezing.

    The first ``head_epochs`` epochs train the head only (``frozen_at_start``
    stages frozen, default all).  Then ``mode="all"`` unfreezes everything at
    once, and ``mode="stage"`` unfreezes one more stage from the top every
    ``stage_epochs`` epochs.  A pure function of the epoch, so a resumed run
    freezes exactly what the interrupted one would have.
    """
    start = n_stages if frozen_at_start is None else frozen_at_start
    if epoch < head_epochs:
        return start
    if mode == "all":
        return 0
    if mode != "stage":
        raise TransferkitError(f"Unknown unfreeze mode {mode!r}; use all or stage.")
    opened = 1 + (epoch - head_epochs) // max(1, stage_epochs)
    return max(0, start - opened)


# --------------------------------------------------------------------------- learning rates


def parse_lr_range(text: str) -> tuple[float, float]:
    """``"1e-5:1e-3"`` -> ``(1e-5, 1e-3)``; the bottom stage gets ``lo``, the head ``hi``."""
    parts = str(text).split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        lo, hi = float(parts[0]), float(parts[1])
    except ValueError:
        raise TransferkitError(f"A learning-rate range must look like lo:hi, e.g. 1e-5:1e-3 (got {text!r}).") from None
    if not (0 < lo <= hi):
        raise TransferkitError(f"A learning-rate range lo:hi needs 0 < lo <= hi (got {text!r}).")
    return lo, hi


def stage_learning_rates(n_stages: int, lr: float, layer_decay: float | None = None,
                         lr_range: tuple[float, float] | None = None) -> list[float]:
    """Learning rates for ``n_stages`` backbone stages (bottom first) followed by the head.

    * ``lr_range=(lo, hi)``: geometric spacing from ``lo`` (bottom stage) to
      ``hi`` (head); ``lr`` is then not used.
    * ``layer_decay=d``: the head gets ``lr``, the stage ``k`` steps below it
      ``lr * d**k``.
    * neither: ``lr`` everywhere.

    Returns ``n_stages + 1`` numbers.
    """
    n = n_stages + 1
    if lr_range is not None:
        lo, hi = lr_range
        if n == 1:
            return [hi]
        return [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]
    if layer_decay is not None:
        if not 0 < layer_decay <= 1:
            raise TransferkitError(f"--layer-decay must be in (0, 1] (got {layer_decay}).")
        return [lr * layer_decay ** (n - 1 - i) for i in range(n)]
    return [lr] * n


def _no_decay(name: str, param: Any) -> bool:
    return param.ndim <= 1 or name.endswith(".bias")


def layer_lr_groups(backbone: Any, head: Any, lr: float, layer_decay: float | None = None,
                    lr_range: tuple[float, float] | None = None, weight_decay: float = 0.0,
                    stages: Sequence[Stage] | None = None, head_name: str = "head") -> list[dict[str, Any]]:
    """Optimiser parameter groups: one per backbone stage (bottom first), then the head.

    Each group is ``{"params", "lr", "weight_decay", "name"}`` (``name`` is the
    stage name; Lightning's learning-rate monitor uses it).  With
    ``weight_decay > 0``, biases and norm weights go to a sibling group
    ``"<name> (no decay)"`` with the same learning rate and no decay.
    Every parameter is included, frozen ones too: optimisers skip parameters
    without gradients, so a later unfreeze needs no new optimiser.
    """
    stages = list(stages) if stages is not None else backbone_stages(backbone)
    lrs = stage_learning_rates(len(stages), lr, layer_decay, lr_range)
    named = dict(backbone.named_parameters())
    units: list[tuple[str, list[tuple[str, Any]]]] = [(s.name, [(n, named[n]) for n in s.param_names]) for s in stages]
    units.append((head_name, list(head.named_parameters())))
    groups: list[dict[str, Any]] = []
    for (name, params), rate in zip(units, lrs):
        if not params:
            continue
        if weight_decay > 0:
            decay = [p for n, p in params if not _no_decay(n, p)]
            plain = [p for n, p in params if _no_decay(n, p)]
            if decay:
                groups.append({"params": decay, "lr": rate, "weight_decay": weight_decay, "name": name})
            if plain:
                groups.append({"params": plain, "lr": rate, "weight_decay": 0.0, "name": f"{name} (no decay)"})
        else:
            groups.append({"params": [p for _, p in params], "lr": rate, "weight_decay": 0.0, "name": name})
    return groups


def describe_groups(groups: Iterable[dict[str, Any]]) -> list[tuple[str, int, float]]:
    """``(name, number of parameters, lr)`` per group, for logs and reports."""
    return [(g.get("name", f"group{i}"), sum(p.numel() for p in g["params"]), float(g["lr"])) for i, g in enumerate(groups)]
