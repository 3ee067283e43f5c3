"""R-CNN (Girshick et al., 2014) as the lectures give it, on a pretrained CNN:

1. region proposals: selective search (OpenCV contrib ``cv2.ximgproc.segmentation``, "fast" mode, on
   the image shrunk to at most 256 px), the first ``--proposals`` boxes;
2. each proposal, widened by 8% of context on every side, is warped to ``--crop-size`` square
   (``torchvision.ops.roi_align``) and embedded by the pretrained CNN: pooled features (R, F),
   cached on disk per image file and box (``core.featcache``);
3. per-class linear classifiers on the standardised features (one vs the rest, L2 logistic
   regression), trained on the true boxes as positives and proposals with IoU < 0.3 with every true
   box as negatives, then ``--hard-rounds`` rounds of hard-negative mining (the negatives the current
   classifier scores highest join the training set);
4. class-specific bounding-box regression (ridge) from the features of proposals with IoU >= 0.6 to
   the true box: ``tx = (gx - px) / pw``, ``ty``, ``tw = log(gw / pw)``, ``th``;
5. per-class NMS.

The network (:class:`RCNN`) holds the CNN, the feature statistics, the classifiers and regressors as
tensors, so it saves as an ordinary model directory.
"""

from __future__ import annotations

import hashlib
import sys
import time
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from transferkit.tasks.detect.model import FrozenBNBody, Normalize

CONTEXT = 0.08


def selective_search(img: Any, n: int, max_side: int = 256) -> torch.Tensor:
    """Selective-search proposals of a PIL image: (R, 4) xyxy pixels of the original image, R <= n."""
    import cv2

    cv2.setNumThreads(1)
    w, h = img.size
    scale = min(1.0, max_side / max(w, h))
    small = img.resize((max(1, round(w * scale)), max(1, round(h * scale)))) if scale < 1 else img
    arr = np.asarray(small)[:, :, ::-1].copy()  # RGB -> BGR
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(arr)
    ss.switchToSelectiveSearchFast()
    rects = ss.process()
    if rects is None or len(rects) == 0:
        return torch.tensor([[0.0, 0.0, float(w), float(h)]])
    r = torch.as_tensor(np.asarray(rects, dtype=np.float32)) / scale          # (R, 4) x, y, w, h
    boxes = torch.cat([r[:, :2], r[:, :2] + r[:, 2:]], 1)
    keep = ((boxes[:, 2] - boxes[:, 0]) >= 8) & ((boxes[:, 3] - boxes[:, 1]) >= 8)
    boxes = boxes[keep][:n]
    return torch.cat([boxes, torch.tensor([[0.0, 0.0, float(w), float(h)]])])  # the whole image is a proposal too


def warp(img_t: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crops of (3, H, W) float [0, 1] at ``boxes`` (R, 4) widened by the context margin -> (R, 3, size, size)."""
    from torchvision.ops import roi_align

    wh = (boxes[:, 2:] - boxes[:, :2]) * CONTEXT
    b = torch.cat([boxes[:, :2] - wh, boxes[:, 2:] + wh], 1)
    return roi_align(img_t[None], [b], output_size=size, spatial_scale=1.0, sampling_ratio=2, aligned=True)


def regression_targets(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """R-CNN's (tx, ty, tw, th) from proposals p to true boxes g (both (R, 4) xyxy)."""
    pw, ph = p[:, 2] - p[:, 0], p[:, 3] - p[:, 1]
    gw, gh = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]
    return torch.stack([((g[:, 0] + g[:, 2]) - (p[:, 0] + p[:, 2])) / 2 / pw,
                        ((g[:, 1] + g[:, 3]) - (p[:, 1] + p[:, 3])) / 2 / ph,
                        torch.log(gw / pw), torch.log(gh / ph)], 1)


def apply_regression(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    pw, ph = p[:, 2] - p[:, 0], p[:, 3] - p[:, 1]
    cx, cy = (p[:, 0] + p[:, 2]) / 2 + t[:, 0] * pw, (p[:, 1] + p[:, 3]) / 2 + t[:, 1] * ph
    w, h = pw * torch.exp(t[:, 2].clamp(-2, 2)), ph * torch.exp(t[:, 3].clamp(-2, 2))
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)


class RCNN(FrozenBNBody):
    """CNN (pooled features) + standardisation + per-class classifiers (K, F) and box regressors (K, 4, F)."""

    def __init__(self, arch: str, num_classes: int, mean: Sequence[float], std: Sequence[float], num_features: int = 0,
                 arch_kwargs: dict | None = None):
        super().__init__()
        import timm

        self.num_classes = int(num_classes)
        self.norm = Normalize(mean, std)
        self.body = timm.create_model(arch, pretrained=False, num_classes=0, **(arch_kwargs or {}))
        f = int(num_features or self.body.num_features)
        self.num_features = f
        self.register_buffer("feat_mean", torch.zeros(f))
        self.register_buffer("feat_std", torch.ones(f))
        self.register_buffer("cls_w", torch.zeros(self.num_classes, f))
        self.register_buffer("cls_b", torch.zeros(self.num_classes))
        self.register_buffer("reg_w", torch.zeros(self.num_classes, 4, f))
        self.register_buffer("reg_b", torch.zeros(self.num_classes, 4))

    def forward(self, crops: torch.Tensor) -> torch.Tensor:  # (R, 3, s, s) in [0, 1] -> standardised features (R, F)
        return (self.body(self.norm(crops)) - self.feat_mean) / self.feat_std

    @torch.inference_mode()
    def embed(self, img_t: torch.Tensor, boxes: torch.Tensor, size: int, batch: int = 64) -> torch.Tensor:
        """Raw pooled features (R, F) of the warped proposals of one image tensor (3, H, W) in [0, 1]."""
        out = [self.body(self.norm(warp(img_t, boxes[i:i + batch], size))) for i in range(0, len(boxes), batch)]
        return torch.cat(out) if out else torch.zeros(0, self.num_features)

    def score(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw features (R, F) -> class probabilities (R, K) and regression outputs (R, K, 4)."""
        z = (feats - self.feat_mean) / self.feat_std
        probs = torch.sigmoid(z @ self.cls_w.T + self.cls_b)
        reg = torch.einsum("rf,kjf->rkj", z, self.reg_w) + self.reg_b
        return probs, reg

    @torch.inference_mode()
    def detect_images(self, images: Sequence[Any], conf: float = 0.25, iou: float = 0.5, max_det: int = 100,
                      proposals: int = 300, crop_size: int = 96) -> list[dict[str, torch.Tensor]]:
        """PIL images -> per image {"boxes" (n, 4) xyxy pixels of the image, "scores", "labels"}."""
        from torchvision.ops import batched_nms

        res = []
        for img in images:
            w, h = img.size
            props = selective_search(img, proposals)
            img_t = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255.0
            probs, reg = self.score(self.embed(img_t, props, crop_size))
            k = self.num_classes
            boxes = apply_regression(props.repeat_interleave(k, 0), reg.reshape(-1, 4)).reshape(-1, 4)
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
            scores, labels = probs.reshape(-1), torch.arange(k).repeat(len(props))
            keep = scores >= conf
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            ok = (boxes[:, 2] - boxes[:, 0] > 1) & (boxes[:, 3] - boxes[:, 1] > 1)
            boxes, scores, labels = boxes[ok], scores[ok], labels[ok]
            sel = batched_nms(boxes, scores, labels, iou)[:max_det]
            res.append({"boxes": boxes[sel], "scores": scores[sel], "labels": labels[sel]})
        return res


def _crop_digest(file_digest: str, box: Sequence[float], size: int) -> str:
    return hashlib.sha1(f"{file_digest}:{size}:{','.join(f'{v:.1f}' for v in box)}".encode()).hexdigest()


def fit_rcnn(cfg: Any, records: Sequence[Any], class_names: Sequence[str], run_dir: Any):
    """Train R-CNN's classifiers and regressors on ``records``; returns (net, arch, preprocessing, source, info)."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from torchvision.ops import box_iou

    from transferkit.core.backbones import _entry_for
    from transferkit.core.featcache import FeatureCache, file_digest, model_key, weights_digest
    from transferkit.core.images import read_image
    from transferkit.core.progress import Progress
    from transferkit.errors import ImageReadError, TransferkitError
    from transferkit.tasks.detect.model import load_pretrained_body

    entry = _entry_for(cfg.backbone)
    net = RCNN(entry.architecture, len(class_names), entry.preprocessing.mean, entry.preprocessing.std)
    pre, source = load_pretrained_body(net, cfg.backbone, cfg.weights)
    net.norm.mean.copy_(torch.tensor(list(pre.mean)).view(1, -1, 1, 1))
    net.norm.std.copy_(torch.tensor(list(pre.std)).view(1, -1, 1, 1))
    net.eval()
    size = int(cfg.crop_size)
    cache = FeatureCache(model_key(entry.architecture, weights_digest(net.body), pre.to_dict(), "rcnn-crop",
                                   {"crop": size, "context": CONTEXT}), meta={"architecture": entry.architecture})
    rng = np.random.default_rng(cfg.seed)
    t0 = time.perf_counter()
    pos_f, pos_l = [], []          # true boxes: features and labels
    neg_pool = []                  # features of background proposals (IoU < 0.3 with every true box)
    reg_f, reg_t, reg_l = [], [], []
    hits = misses = 0
    pending: dict[str, np.ndarray] = {}  # new rows, written to the cache in chunks (each write rewrites the file)
    with Progress(len(records), "rcnn features", unit="img") as bar:
        for r in records:
            try:
                img = read_image(r.path)
            except ImageReadError as err:
                print(f"warning: skipped {err.path}: {err.reason}", file=sys.stderr)
                bar.update(1)
                continue
            scale = torch.tensor([img.size[0] / r.width, img.size[1] / r.height] * 2)
            gt = r.boxes * scale
            props = selective_search(img, cfg.proposals)
            iou = box_iou(props, gt) if len(gt) else torch.zeros(len(props), 0)
            best, arg = (iou.max(1) if len(gt) else (torch.zeros(len(props)), torch.zeros(len(props), dtype=torch.long)))
            neg_idx = torch.nonzero(best < 0.3).squeeze(1).numpy()
            neg_idx = rng.permutation(neg_idx)[: 4 * cfg.negatives]
            reg_idx = torch.nonzero(best >= 0.6).squeeze(1).numpy()
            reg_idx = rng.permutation(reg_idx)[: 8 * max(1, len(gt))]
            boxes = torch.cat([gt, props[neg_idx], props[reg_idx]]) if len(gt) else props[neg_idx]
            fd = file_digest(r.path)
            digests = [_crop_digest(fd, b.tolist(), size) for b in boxes]
            found = cache.get(digests)
            todo = [i for i, d in enumerate(digests) if d not in found]
            feats = np.zeros((len(boxes), net.num_features), dtype=np.float32)
            for i, d in enumerate(digests):
                if d in found:
                    feats[i] = found[d]
            if todo:
                img_t = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255.0
                new = net.embed(img_t, boxes[todo], size).numpy()
                feats[todo] = new
                pending.update({digests[i]: new[j] for j, i in enumerate(todo)})
                if len(pending) >= 4096:
                    cache.put(pending)
                    pending = {}
            hits += len(boxes) - len(todo)
            misses += len(todo)
            g = len(gt)
            pos_f.append(feats[:g])
            pos_l.append(r.labels.numpy())
            neg_pool.append(feats[g:g + len(neg_idx)])
            rf = feats[g + len(neg_idx):]
            if len(reg_idx):
                reg_f.append(rf)
                reg_t.append(regression_targets(props[reg_idx], gt[arg[reg_idx]]).numpy())
                reg_l.append(r.labels[arg[reg_idx]].numpy())
            bar.update(1)
    cache.put(pending)
    P, L = np.concatenate(pos_f), np.concatenate(pos_l)
    if len(P) == 0:
        raise TransferkitError("No true boxes in the training images: nothing for R-CNN to learn.")
    N = np.concatenate(neg_pool) if neg_pool else np.zeros((0, net.num_features), np.float32)
    feat_s = time.perf_counter() - t0
    allf = np.concatenate([P, N])
    mean, std = allf.mean(0), allf.std(0) + 1e-6
    z = lambda a: (a - mean) / std  # noqa: E731
    W = np.zeros((len(class_names), net.num_features), np.float32)
    B = np.zeros(len(class_names), np.float32)
    # initial negatives: `negatives` per image, drawn from the pool
    n_init = min(len(N), cfg.negatives * len(records))
    active = rng.permutation(len(N))[:n_init]
    rounds = []
    for k in range(len(class_names)):
        act = set(active.tolist())
        for rnd in range(cfg.hard_rounds + 1):
            idx = np.array(sorted(act), dtype=int)
            X = np.concatenate([z(P), z(N[idx])])
            y = np.concatenate([(L == k).astype(int), np.zeros(len(idx), int)])
            if y.min() == y.max():
                break
            clf = LogisticRegression(C=cfg.svm_c, max_iter=500, class_weight="balanced")
            clf.fit(X, y)
            W[k], B[k] = clf.coef_[0], clf.intercept_[0]
            if rnd == cfg.hard_rounds or len(N) == 0:
                break
            s = z(N) @ W[k] + B[k]
            hard = [int(i) for i in np.argsort(-s)[: max(1, len(idx) // 2)] if s[i] > -1.0 and int(i) not in act]
            rounds.append((class_names[k], rnd + 1, len(hard)))
            if not hard:
                break
            act.update(hard)
    RW = np.zeros((len(class_names), 4, net.num_features), np.float32)
    RB = np.zeros((len(class_names), 4), np.float32)
    if reg_f:
        F_, T_, RL = np.concatenate(reg_f), np.concatenate(reg_t), np.concatenate(reg_l)
        for k in range(len(class_names)):
            m = RL == k
            if m.sum() >= 4:
                ridge = Ridge(alpha=1000.0).fit(z(F_[m]), T_[m])
                RW[k], RB[k] = ridge.coef_, ridge.intercept_
    net.feat_mean.copy_(torch.from_numpy(mean.astype(np.float32)))
    net.feat_std.copy_(torch.from_numpy(std.astype(np.float32)))
    net.cls_w.copy_(torch.from_numpy(W))
    net.cls_b.copy_(torch.from_numpy(B))
    net.reg_w.copy_(torch.from_numpy(RW))
    net.reg_b.copy_(torch.from_numpy(RB))
    n_hard = sum(h for _, _, h in rounds)
    print(f"rcnn: {len(P)} true boxes, {len(N)} background proposals in the pool, {n_hard} hard negatives added; "
          f"features {feat_s:.0f} s ({hits} cached, {misses} computed)", file=sys.stderr)
    info = {"feature_seconds": round(feat_s, 1), "crops_cached": hits, "crops_computed": misses, "hard_negatives": n_hard}
    return net, entry.architecture, pre, source, info
