"""Generic tests over EVERY registered architecture (every family, whoever wrote it).

For each name in the registry: a forward pass on its ``default_input`` gives the
right shape and no NaN, ``num_classes=0`` gives ``(N, num_features)``, a backward
pass reaches every parameter, and a save/load round trip through a model
directory gives identical outputs.  Factories that take a ``width`` option get
a small one, which keeps the suite fast without skipping any architecture.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from transferkit.core import modeldir
from transferkit.core.registry import create_arch, create_encoder, list_archs, register_arch

NAMES = sorted(list_archs())
SMALL_WIDTH = 4


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks are overhead-bound: one thread is faster, and far faster on a shared, busy CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def build(name: str, num_classes: int):
    entry = list_archs()[name]
    kwargs = {"num_classes": num_classes, "in_chans": entry.default_input[0]}
    if "width" in inspect.signature(entry.factory).parameters:
        kwargs["width"] = SMALL_WIDTH
    torch.manual_seed(0)
    return create_arch(name, **kwargs), entry.default_input, {k: v for k, v in kwargs.items() if k == "width"}


def test_the_families_are_registered():
    for name in ("resnet18", "resnet34", "resnet50", "plain18", "plain34", "resnet20", "plain56",
                 "googlenet", "inception_small", "inception_small_naive", "vgg11", "vgg16", "lenet5"):
        assert name in NAMES
    assert list_archs()["plain34"].family == "resnet"
    assert list_archs()["lenet5"].default_input == (1, 28, 28)


@pytest.mark.parametrize("name", NAMES)
def test_forward_shape_and_no_nan(name):
    net, shape, _ = build(name, num_classes=3)
    net.train()
    y = net(torch.randn(2, *shape))
    assert tuple(y.shape) == (2, 3)
    assert torch.isfinite(y).all()
    net.eval()
    with torch.no_grad():
        assert torch.isfinite(net(torch.randn(2, *shape))).all()


@pytest.mark.parametrize("name", NAMES)
def test_pooled_embedding_without_classifier(name):
    net, shape, _ = build(name, num_classes=0)
    assert isinstance(net.num_features, int) and net.num_features > 0
    net.eval()
    with torch.no_grad():
        y = net(torch.randn(2, *shape))
    assert tuple(y.shape) == (2, net.num_features)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", NAMES)
def test_backward_reaches_every_parameter(name):
    net, shape, _ = build(name, num_classes=3)
    net.train()
    loss = torch.nn.functional.cross_entropy(net(torch.randn(4, *shape)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient reaches {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())
    assert sum(float(p.grad.abs().sum()) for p in net.parameters()) > 0


@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip(name, tmp_path):
    net, shape, options = build(name, num_classes=3)
    net.eval()
    config = {"task": "arch", "architecture": name, "source": "transferkit", "num_classes": 3,
              "in_chans": shape[0], "arch_args": options}
    modeldir.save_model_dir(net, config, tmp_path / "m")
    loaded = modeldir.load(tmp_path / "m")
    assert type(loaded.module) is type(net)
    x = torch.randn(2, *shape)
    with torch.no_grad():
        assert torch.equal(loaded.module(x), net(x))


@pytest.mark.parametrize("name", ["resnet18", "plain20", "googlenet", "inception_small", "vgg11", "lenet5"])
def test_every_family_is_an_encoder_for_other_tasks(name):
    enc, pre = create_encoder(name, in_chans=1)
    assert pre is None  # from scratch: no pretrained preprocessing
    enc.eval()
    with torch.no_grad():
        y = enc(torch.randn(2, 1, 32, 32))
    assert tuple(y.shape) == (2, enc.num_features)


def test_timm_prefix_gives_timms_encoder_where_the_names_clash():
    ours, _ = create_encoder("resnet18", in_chans=3)
    theirs, pre = create_encoder("timm/resnet18", weights=None)
    assert type(ours).__module__ == "transferkit.archs.resnet"
    assert type(theirs).__module__.startswith("timm.") and pre is not None
    assert ours.num_features == theirs.num_features == 512


def test_registering_a_duplicate_name_raises():
    before = dict(list_archs())

    def lenet5(num_classes: int = 10, in_chans: int = 1):  # same name as the real one
        raise AssertionError("never built")

    with pytest.raises(ValueError, match="already registered"):
        register_arch(lenet5)
    with pytest.raises(ValueError, match="already registered"):
        register_arch(name="resnet18")(lenet5)
    assert list_archs() == before
