"""core.freezing: stages, freezing the bottom N, frozen BatchNorm in eval mode, per-layer learning rates."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from transferkit.core import freezing as fz
from transferkit.errors import TransferkitError


def tiny_timm():
    import timm

    torch.manual_seed(0)
    return timm.create_model("test_efficientnet", pretrained=False, num_classes=0)


def test_timm_stages_follow_group_matcher():
    import timm

    stages = fz.backbone_stages(timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0))
    assert [s.name for s in stages] == [
        "stem", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "blocks.4", "blocks.5", "blocks.6+conv_head+bn2"
    ]
    resnet = fz.backbone_stages(timm.create_model("resnet18", pretrained=False, num_classes=0))
    assert [s.name for s in resnet] == ["stem", "layer1", "layer2", "layer3", "layer4"]


def test_stages_cover_every_parameter_once():
    m = tiny_timm()
    for fine in (False, True):
        names = [n for s in fz.backbone_stages(m, fine=fine) for n in s.param_names]
        assert sorted(names) == sorted(n for n, _ in m.named_parameters())
    assert len(fz.backbone_stages(m, fine=True)) >= len(fz.backbone_stages(m))


class Plain(fz.FrozenBNMixin, nn.Module):
    """A non-timm network: stages are its top-level children, one container level opened."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False), nn.ReLU(),
            nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
        )

    def forward(self, x):
        return self.features(x).mean((2, 3))


def test_fallback_stages_and_affine_free_batchnorm_stays_frozen():
    net = Plain()
    assert [s.name for s in fz.backbone_stages(net)] == ["features.0", "features.3", "features.4"]
    fz.freeze_bottom(net, 1)
    net.train()
    assert not net.features[1].training  # no parameters of its own, frozen with conv 0
    assert net.features[4].training
    before = net.features[1].running_mean.clone()
    net(torch.randn(4, 3, 12, 12) * 3 + 1)
    assert torch.equal(before, net.features[1].running_mean)


def test_freeze_bottom_and_training_step_leave_frozen_weights_untouched():
    m = tiny_timm()
    stages = fz.backbone_stages(m)
    frozen = fz.freeze_bottom(m, 3)
    assert [s.name for s in frozen] == [s.name for s in stages[:3]]
    state = fz.trainable_state(m)
    frozen_names = {n for s in stages[:3] for n in s.param_names}
    assert all(not state[n] for n in frozen_names)
    assert all(state[n] for n in state if n not in frozen_names)

    before = {k: v.clone() for k, v in m.state_dict().items()}
    head = nn.Linear(m.num_features, 2)
    opt = torch.optim.SGD(fz.layer_lr_groups(m, head, lr=0.1), lr=0.1)
    m.train()
    fz.keep_frozen_bn_eval(m)
    loss = nn.functional.cross_entropy(head(m(torch.randn(4, 3, 32, 32))), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    opt.step()
    after = m.state_dict()
    for name in frozen_names:
        assert torch.equal(before[name], after[name]), name
    # frozen BatchNorm running statistics did not move either (eval mode), trainable ones did
    assert torch.equal(before["bn1.running_mean"], after["bn1.running_mean"])
    last_bn = [k for k in after if k.endswith("running_mean") and k.startswith("bn2")][0]
    assert not torch.equal(before[last_bn], after[last_bn])


def test_freeze_to_counts():
    n = len(fz.backbone_stages(tiny_timm()))
    assert fz.resolve_freeze_to(None, n) == n
    assert fz.resolve_freeze_to(0, n) == 0
    assert fz.resolve_freeze_to(-1, n) == n - 1
    with pytest.raises(TransferkitError, match="more than the backbone"):
        fz.resolve_freeze_to(n + 1, n)
    with pytest.raises(TransferkitError):
        fz.resolve_freeze_to(-(n + 1), n)


def test_unfreeze_all():
    m = tiny_timm()
    fz.freeze_bottom(m)
    assert not any(p.requires_grad for p in m.parameters())
    fz.unfreeze_all(m)
    m.train()
    fz.keep_frozen_bn_eval(m)
    assert all(p.requires_grad for p in m.parameters()) and m.bn1.training


def test_layer_decay_learning_rates():
    m = tiny_timm()
    head = nn.Linear(m.num_features, 3)
    groups = fz.layer_lr_groups(m, head, lr=1e-3, layer_decay=0.5)
    k = len(fz.backbone_stages(m))
    assert [g["name"] for g in groups][-1] == "head"
    lrs = [g["lr"] for g in groups]
    assert lrs == pytest.approx([1e-3 * 0.5 ** (k - i) for i in range(k)] + [1e-3])
    # every parameter is in exactly one group
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(m.parameters())) + 2


def test_lr_range_is_geometric_from_bottom_to_head():
    m = tiny_timm()
    groups = fz.layer_lr_groups(m, nn.Linear(m.num_features, 2), lr=1.0, lr_range=fz.parse_lr_range("1e-5:1e-3"))
    lrs = [g["lr"] for g in groups]
    assert lrs[0] == pytest.approx(1e-5) and lrs[-1] == pytest.approx(1e-3)
    ratios = [b / a for a, b in zip(lrs, lrs[1:])]
    assert all(math.isclose(r, ratios[0], rel_tol=1e-9) for r in ratios)


def test_weight_decay_splits_norm_and_bias():
    m = tiny_timm()
    groups = fz.layer_lr_groups(m, nn.Linear(m.num_features, 2), lr=1e-3, layer_decay=0.8, weight_decay=0.05)
    by_name = {g["name"]: g for g in groups}
    assert by_name["head"]["weight_decay"] == 0.05 and by_name["head (no decay)"]["weight_decay"] == 0.0
    assert by_name["head"]["lr"] == by_name["head (no decay)"]["lr"]
    assert all(p.ndim <= 1 for p in by_name["head (no decay)"]["params"])


@pytest.mark.parametrize("text", ["1e-3", "a:b", "1e-3:1e-5", "0:1"])
def test_bad_lr_range(text):
    with pytest.raises(TransferkitError):
        fz.parse_lr_range(text)


def test_gradual_unfreezing_schedule():
    assert [fz.frozen_stages_at(e, 4, head_epochs=2, mode="all") for e in range(4)] == [4, 4, 0, 0]
    assert [fz.frozen_stages_at(e, 4, head_epochs=1, mode="stage") for e in range(7)] == [4, 3, 2, 1, 0, 0, 0]
    assert [fz.frozen_stages_at(e, 4, head_epochs=1, mode="stage", stage_epochs=2) for e in range(6)] == [4, 3, 3, 2, 2, 1]
