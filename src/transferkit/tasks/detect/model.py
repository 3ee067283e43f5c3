"""Detection networks: the single-shot grid detector (``yolo``) and the one-object localiser (``localize``).

``yolo``: every cell of three feature maps predicts objectness, a box and class scores::

    image (N, 3, S, S) in [0, 1] -> normalise (the backbone's mean/std)
      -> backbone (timm, features_only)   C3 (N, c3, S/8, S/8), C4 (N, c4, S/16, S/16), C5 (N, c5, S/32, S/32)
      -> neck (top-down feature pyramid)  P3, P4, P5 each (N, D, S/s, S/s)
      -> shared head (2x conv3x3 + conv1x1) per level (N, 1 + 4 + K, S/s, S/s)
      -> flattened over the levels        (N, A, 1 + 4 + K), A = sum of (S/s)^2 cells

Anchor-free: a cell at centre (cx, cy) of stride s predicts distances
``l, t, r, b = exp(o) * s`` to the box sides (box = cx - l, cy - t, cx + r, cy + b).
Label assignment (``loss``): a cell is positive for a true box when its centre lies
inside the box and within ``center_radius`` strides of the box centre, on the level
whose size range holds the box (the largest of l, t, r, b in (4s, 8s], FCOS's
ranges); a box with no such cell takes its nearest cell; a cell claimed by two
boxes takes the smaller one.  Losses: quality focal loss on objectness over every cell (a positive's target is the IoU its
box reaches),
GIoU on the positives' boxes, BCE on the positives' classes.  Scores at
inference: sigmoid(objectness) * sigmoid(class) (objectness alone for one class), then per-class NMS
(``torchvision.ops.batched_nms``).

``localize``: the pooled backbone features -> one linear layer -> ``[p, x, y, w, h, c1..ck]``
(p: an object is present, logit; x, y: box centre, w, h: box size, all as
fractions of the image, through a sigmoid; c: class logits).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn
from torch.nn import functional as F


class ConvBNAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3):
        super().__init__(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.SiLU(inplace=True))


class Normalize(nn.Module):
    """(x - mean) / std with the backbone's statistics as buffers (so exported models take [0, 1] pixels)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class FrozenBNBody(nn.Module):
    """Base for networks whose backbone BatchNorm layers stay in eval mode (small detection batches)."""

    body: nn.Module

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            for m in self.body.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self


class YoloDetector(FrozenBNBody):
    def __init__(self, arch: str, num_classes: int, mean: Sequence[float], std: Sequence[float],
                 out_indices: Sequence[int] = (2, 3, 4), neck: int = 64, arch_kwargs: dict | None = None):
        super().__init__()
        import timm

        self.num_classes = int(num_classes)
        self.norm = Normalize(mean, std)
        self.body = timm.create_model(arch, features_only=True, out_indices=tuple(out_indices), pretrained=False,
                                      **(arch_kwargs or {}))
        chans = self.body.feature_info.channels()
        self.strides = [int(s) for s in self.body.feature_info.reduction()]
        self.lateral = nn.ModuleList(nn.Conv2d(c, neck, 1) for c in chans)
        self.smooth = nn.ModuleList(ConvBNAct(neck, neck) for _ in chans)
        self.head = nn.Sequential(ConvBNAct(neck, neck), ConvBNAct(neck, neck))
        self.pred = nn.Conv2d(neck, 1 + 4 + self.num_classes, 1)
        self.scales = nn.Parameter(torch.zeros(len(chans)))  # per-level log-scale of the box distances
        with torch.no_grad():
            self.pred.bias.zero_()
            self.pred.bias[0] = -4.6  # objectness prior 0.01
            self.pred.bias[5:] = 0.0  # classes are learned on positive cells only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) in [0, 1] -> raw outputs (N, A, 1 + 4 + K): objectness logit, 4 log-distances, class logits."""
        feats = self.body(self.norm(x))                        # [(N, c_i, S/s_i, S/s_i)]
        lat = [l(f) for l, f in zip(self.lateral, feats)]      # [(N, D, S/s_i, S/s_i)]
        for i in range(len(lat) - 2, -1, -1):                  # top-down: coarse maps refine the finer ones
            lat[i] = lat[i] + F.interpolate(lat[i + 1], size=lat[i].shape[-2:], mode="nearest")
        outs = []
        for i, p in enumerate(lat):
            o = self.pred(self.head(self.smooth[i](p)))        # (N, 5 + K, h, w)
            o = torch.cat([o[:, :1], o[:, 1:5] + self.scales[i], o[:, 5:]], 1)
            outs.append(o.flatten(2).transpose(1, 2))          # (N, h*w, 5 + K)
        return torch.cat(outs, 1)                              # (N, A, 5 + K)

    def points(self, size: int, device: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Cell centres (A, 2) in pixels and their strides (A,), in the order of :meth:`forward`'s rows."""
        pts, strides = [], []
        for s in self.strides:
            n = -(-size // s)
            c = (torch.arange(n, device=device, dtype=torch.float32) + 0.5) * s
            yy, xx = torch.meshgrid(c, c, indexing="ij")
            pts.append(torch.stack([xx.reshape(-1), yy.reshape(-1)], 1))
            strides.append(torch.full((n * n,), float(s), device=device))
        return torch.cat(pts), torch.cat(strides)

    @staticmethod
    def decode_boxes(raw: torch.Tensor, pts: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
        """(..., A, 4) log-distances -> (..., A, 4) xyxy pixels."""
        d = torch.exp(raw.clamp(max=8.0)) * strides[:, None]
        return torch.cat([pts - d[..., :2], pts + d[..., 2:]], -1)

    def loss(self, out: torch.Tensor, targets: Sequence[dict], size: int, center_radius: float = 2.5,
             box_weight: float = 2.0) -> dict[str, torch.Tensor]:
        """Focal objectness + GIoU box + BCE class losses for a batch (see the module docstring)."""
        from torchvision.ops import generalized_box_iou_loss

        out = out.float()
        pts, strides = self.points(size, out.device)
        boxes = self.decode_boxes(out[..., 1:5], pts, strides)           # (N, A, 4)
        obj_t = torch.zeros_like(out[..., 0])
        pos_boxes, pos_t, pos_cls, cls_t = [], [], [], []
        for b, t in enumerate(targets):
            gt, lab = t["boxes"].to(out.device).float(), t["labels"].to(out.device)
            if len(gt) == 0:
                continue
            assigned = assign(pts, strides, gt, center_radius)             # (A,) index of the true box or -1
            pos = assigned >= 0
            obj_t[b, pos] = 1.0
            pos_boxes.append(boxes[b, pos])
            pos_t.append(gt[assigned[pos]])
            pos_cls.append(out[b, pos, 5:])
            cls_t.append(F.one_hot(lab[assigned[pos]], self.num_classes).float())
        n_pos = max(1.0, float((obj_t > 0).sum()))
        if pos_boxes:
            pb, pt = torch.cat(pos_boxes), torch.cat(pos_t)
            l_box = generalized_box_iou_loss(pb, pt, reduction="mean")
            # IoU-aware objectness: a positive cell's target is the IoU its box reaches (quality focal loss),
            # so that at inference badly placed boxes score lower than well placed ones and lose in NMS
            with torch.no_grad():
                q = box_iou_pairs(pb, pt).clamp(min=0.05)
            obj_t[obj_t > 0] = q.to(obj_t.dtype)
            l_cls = F.binary_cross_entropy_with_logits(torch.cat(pos_cls), torch.cat(cls_t)) if self.num_classes > 1 \
                else out.new_zeros(())
        else:
            l_box = l_cls = out.sum() * 0.0
        p = torch.sigmoid(out[..., 0])
        l_obj = (F.binary_cross_entropy_with_logits(out[..., 0], obj_t, reduction="none")
                 * (obj_t - p).abs().pow(2)).sum() / n_pos
        total = l_obj + box_weight * l_box + l_cls
        return {"loss": total, "loss_obj": l_obj.detach(), "loss_box": l_box.detach(), "loss_cls": l_cls.detach()}

    @torch.no_grad()
    def detect(self, out: torch.Tensor, size: int, conf: float = 0.25, iou: float = 0.5, max_det: int = 100,
               pre_nms: int = 1000) -> list[dict[str, torch.Tensor]]:
        """Raw outputs (N, A, 5 + K) -> per image {"boxes" (n, 4) xyxy in resized pixels, "scores", "labels"}."""
        from torchvision.ops import batched_nms

        out = out.float()
        pts, strides = self.points(size, out.device)
        boxes = self.decode_boxes(out[..., 1:5], pts, strides).clamp(0, size)
        scores = torch.sigmoid(out[..., :1])                                # (N, A, 1)
        if self.num_classes > 1:  # one class: objectness is the score (the class logit is never trained)
            scores = scores * torch.sigmoid(out[..., 5:])                   # (N, A, K)
        results = []
        for b in range(out.shape[0]):
            s = scores[b].flatten()                                         # (A*K,)
            keep = torch.nonzero(s > conf).squeeze(1)
            if keep.numel() > pre_nms:
                keep = keep[s[keep].topk(pre_nms).indices]
            cell, lab = keep // self.num_classes, keep % self.num_classes
            bx, sc = boxes[b, cell], s[keep]
            ok = (bx[:, 2] - bx[:, 0] > 0.5) & (bx[:, 3] - bx[:, 1] > 0.5)
            bx, sc, lab = bx[ok], sc[ok], lab[ok]
            k = batched_nms(bx, sc, lab, iou)[:max_det]
            results.append({"boxes": bx[k], "scores": sc[k], "labels": lab[k]})
        return results


def box_iou_pairs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of matching rows of two (P, 4) xyxy box tensors -> (P,)."""
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area = lambda x: (x[:, 2] - x[:, 0]).clamp(min=0) * (x[:, 3] - x[:, 1]).clamp(min=0)  # noqa: E731
    return inter / (area(a) + area(b) - inter).clamp(min=1e-6)


def assign(pts: torch.Tensor, strides: torch.Tensor, gt: torch.Tensor, center_radius: float = 2.5) -> torch.Tensor:
    """For every cell (A,), the index of the true box (G, 4) it must predict, or -1 (background)."""
    x, y = pts[:, 0:1], pts[:, 1:2]                                          # (A, 1)
    ltrb = torch.stack([x - gt[:, 0], y - gt[:, 1], gt[:, 2] - x, gt[:, 3] - y], -1)   # (A, G, 4)
    inside = ltrb.min(-1).values > 0
    cx, cy = (gt[:, 0] + gt[:, 2]) / 2, (gt[:, 1] + gt[:, 3]) / 2
    r = center_radius * strides[:, None]
    near = ((x - cx).abs() < r) & ((y - cy).abs() < r)
    m = ltrb.max(-1).values
    levels = torch.unique(strides)
    lo = torch.where(strides == levels[0], torch.zeros_like(strides), 4 * strides)[:, None]
    hi = torch.where(strides == levels[-1], torch.full_like(strides, float("inf")), 8 * strides)[:, None]
    ok = inside & near & (m > lo) & (m <= hi)
    area = ((gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1]))[None].expand_as(ok)
    cost = torch.where(ok, area, torch.full_like(area, float("inf")))
    best, idx = cost.min(1)
    assigned = torch.where(torch.isfinite(best), idx, torch.full_like(idx, -1))
    # a box with no cell (tiny, or crowded out) takes the nearest free cell of the finest level, else the nearest cell
    for g in range(len(gt)):
        if not (assigned == g).any():
            d = (x[:, 0] - cx[g]) ** 2 + (y[:, 0] - cy[g]) ** 2 + (strides != levels[0]) * 1e6
            d = d + (assigned >= 0) * 1e3
            assigned[int(d.argmin())] = g
    return assigned


class Localizer(FrozenBNBody):
    """Backbone -> pooled features (N, F) -> Linear -> (N, 5 + K) = [p, x, y, w, h, c1..ck] (logits)."""

    def __init__(self, arch: str, num_classes: int, mean: Sequence[float], std: Sequence[float],
                 arch_kwargs: dict | None = None):
        super().__init__()
        import timm

        self.num_classes = int(num_classes)
        self.norm = Normalize(mean, std)
        self.body = timm.create_model(arch, pretrained=False, num_classes=0, **(arch_kwargs or {}))
        self.fc = nn.Linear(int(self.body.num_features), 5 + self.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, S, S) -> (N, 5 + K)
        return self.fc(self.body(self.norm(x)))

    @staticmethod
    def largest(targets: Sequence[dict], size: int, device: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The learned target of each image: (present (N,), xywh / size (N, 4), class (N,))."""
        p, xywh, cls = [], [], []
        for t in targets:
            b = t["boxes"].to(device).float()
            if len(b) == 0:
                p.append(0.0)
                xywh.append(torch.zeros(4, device=device))
                cls.append(0)
                continue
            i = int(((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).argmax())
            x1, y1, x2, y2 = b[i]
            p.append(1.0)
            xywh.append(torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]) / size)
            cls.append(int(t["labels"][i]))
        return torch.tensor(p, device=device), torch.stack(xywh), torch.tensor(cls, device=device)

    def loss(self, out: torch.Tensor, targets: Sequence[dict], size: int, box_weight: float = 2.0, **_: Any):
        """BCE on p; for images with an object: L1 + GIoU on the box and cross-entropy on the class."""
        from torchvision.ops import box_convert, generalized_box_iou_loss

        out = out.float()
        p, xywh, cls = self.largest(targets, size, out.device)
        l_obj = F.binary_cross_entropy_with_logits(out[:, 0], p)
        has = p > 0
        if has.any():
            pred = torch.sigmoid(out[has, 1:5])
            l_box = F.l1_loss(pred, xywh[has]) + generalized_box_iou_loss(
                box_convert(pred, "cxcywh", "xyxy"), box_convert(xywh[has], "cxcywh", "xyxy"), reduction="mean")
            l_cls = F.cross_entropy(out[has, 5:], cls[has]) if self.num_classes > 1 else out.new_zeros(())
        else:
            l_box = l_cls = out.sum() * 0.0
        total = l_obj + box_weight * l_box + l_cls
        return {"loss": total, "loss_obj": l_obj.detach(), "loss_box": l_box.detach(), "loss_cls": l_cls.detach()}

    @torch.no_grad()
    def detect(self, out: torch.Tensor, size: int, conf: float = 0.25, **_: Any) -> list[dict[str, torch.Tensor]]:
        """(N, 5 + K) -> at most one box per image, score = sigmoid(p) * softmax class probability."""
        from torchvision.ops import box_convert

        out = out.float()
        res = []
        for o in out:
            prob = torch.softmax(o[5:], 0)
            c = int(prob.argmax())
            score = torch.sigmoid(o[0]) * prob[c]
            box = box_convert(torch.sigmoid(o[1:5])[None] * size, "cxcywh", "xyxy").clamp(0, size)
            keep = score >= conf
            res.append({"boxes": box[:1] if keep else box[:0], "scores": score.reshape(1)[:1] if keep else out.new_zeros(0),
                        "labels": torch.tensor([c] if keep else [], dtype=torch.int64)})
        return res


def freeze_stages(body: nn.Module, n: int) -> int:
    """Freeze a timm backbone's parameters up to the end of its ``n``-th feature stage; returns how many tensors.

    The stages are the model's ``feature_info`` (stride 2, 4, 8, ...): freezing the first two keeps the stem and the
    stride-4 blocks as pretrained, and the backward pass then stops before the largest activation maps.
    """
    from transferkit.errors import TransferkitError

    if n <= 0:
        return 0
    info = getattr(body.feature_info, "info", body.feature_info)  # features_only: FeatureInfo; a classifier: list
    if n > len(info):
        raise TransferkitError(f"--freeze-stages {n}: this backbone has {len(info)} feature stages.")
    modules = list(body.named_modules())  # registration order: the stem first, then stage after stage
    names = [name for name, _ in modules]
    target = info[n - 1]["module"]
    if target not in names:
        target = target.replace(".", "_")  # timm's FeatureListNet flattens nested names
    if target not in names:
        raise TransferkitError(f"--freeze-stages: the backbone has no module {info[n - 1]['module']!r}.")
    start = names.index(target)
    end = max(i for i, name in enumerate(names) if i >= start and (name == target or name.startswith(target + ".")))
    count = 0
    for _, module in modules[: end + 1]:
        for p in module.parameters(recurse=False):
            p.requires_grad_(False)
            count += 1
    return count


def load_pretrained_body(net: nn.Module, name: str, weights: str) -> tuple[Any, str]:
    """Copy pretrained backbone weights into ``net.body``; returns (Preprocessing, source text).

    ``weights``: ``pretrained`` (offline resolution), ``none`` (keep random init) or a file.
    """
    from transferkit.core.backbones import _entry_for, resolve
    from transferkit.errors import TransferkitError

    if str(weights).lower() in ("none", "random", "scratch"):
        return _entry_for(name).preprocessing, "random initialisation"
    resolved = resolve(name, None if weights == "pretrained" else weights)
    state = resolved.module.state_dict()
    target = net.body.state_dict()
    missing = [k for k in target if k not in state]
    if missing:
        raise TransferkitError(f"The pretrained weights of {name} do not fit its feature extractor ({len(missing)} tensors "
                               f"missing, e.g. {missing[:2]}).")
    net.body.load_state_dict({k: state[k] for k in target}, strict=True)
    return resolved.preprocessing, resolved.source


def build_network(config: dict[str, Any]) -> nn.Module:
    """The untrained network a detector's ``config.json`` describes (used by ``transferkit.load``)."""
    det = config.get("detect") or {}
    pre = config.get("preprocessing") or {}
    mean, std = pre.get("mean", (0.485, 0.456, 0.406)), pre.get("std", (0.229, 0.224, 0.225))
    method = det.get("method", "yolo")
    if method == "yolo":
        return YoloDetector(config["architecture"], int(config["num_classes"]), mean, std,
                            det.get("out_indices", (2, 3, 4)), int(det.get("neck_channels", 64)), config.get("arch_kwargs"))
    if method == "localize":
        return Localizer(config["architecture"], int(config["num_classes"]), mean, std, config.get("arch_kwargs"))
    if method == "rcnn":
        from transferkit.tasks.detect.rcnn import RCNN

        return RCNN(config["architecture"], int(config["num_classes"]), mean, std, int(det.get("num_features", 0)),
                    config.get("arch_kwargs"))
    from transferkit.errors import TransferkitError

    raise TransferkitError(f"Unknown detection method {method!r} in the model config.")
