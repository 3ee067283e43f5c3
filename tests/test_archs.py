"""The architecture families: hand-computed parameter counts, the plain switch, input sizes, summaries."""

from __future__ import annotations

import pytest
import torch
import torchvision

from transferkit.archs.inception import InceptionNaive, InceptionReduced
from transferkit.archs.resnet import BasicBlock, Bottleneck
from transferkit.core.registry import create_arch
from transferkit.tasks.arch import ArchRef, create_network, resolve_arch
from transferkit.tasks.arch.summary import summarize


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


# --------------------------------------------------------------------------- parameter counts by hand


def test_basic_block_parameters_by_hand():
    # identity shortcut: two 3x3 convs 16->16 (no bias) + two batch norms (gamma, beta)
    assert n_params(BasicBlock(16, 16)) == 2 * (16 * 16 * 9) + 2 * (2 * 16)
    # projection shortcut W x: 1x1 conv 16->32 at stride 2, and its batch norm
    expected = (16 * 32 * 9) + (32 * 32 * 9) + 2 * (2 * 32) + (16 * 32) + 2 * 32
    assert n_params(BasicBlock(16, 32, stride=2)) == expected
    # the plain twin has no shortcut parameters
    assert n_params(BasicBlock(16, 32, stride=2, plain=True)) == expected - (16 * 32) - 2 * 32


def test_bottleneck_parameters_by_hand():
    b = Bottleneck(64, 64)  # 1x1 64->64, 3x3 64->64, 1x1 64->256, projection 64->256
    convs = 64 * 64 + 64 * 64 * 9 + 64 * 256 + 64 * 256
    norms = 2 * (64 + 64 + 256 + 256)
    assert n_params(b) == convs + norms
    assert b.out_channels == 256


# GoogLeNet inception(3a): input 192 channels at 28x28; #1x1 64, #3x3 reduce 96, #3x3 128, #5x5 reduce 16, #5x5 32, pool proj 32
A3 = dict(in_ch=192, c1=64, c3r=96, c3=128, c5r=16, c5=32, pool_proj=32)


def test_inception_reduced_parameters_and_macs_by_hand():
    m = InceptionReduced(**A3)
    conv_weights = 192 * 64 + 192 * 96 + 96 * 128 * 9 + 192 * 16 + 16 * 32 * 25 + 192 * 32
    bn = 2 * (64 + 96 + 128 + 16 + 32 + 32)
    assert n_params(m) == conv_weights + bn == 164_064
    assert m.out_channels == 64 + 128 + 32 + 32 == 256
    s = summarize(m, (192, 28, 28))
    # stride 1, 'same' padding: every conv weight is used once per output pixel
    assert s.total_macs == conv_weights * 28 * 28 == 128_049_152
    assert s.output_shape == [256, 28, 28]


def test_inception_naive_parameters_and_macs_by_hand():
    m = InceptionNaive(192, 64, 128, 32)
    conv_weights = 192 * 64 + 192 * 128 * 9 + 192 * 32 * 25
    bn = 2 * (64 + 128 + 32)
    assert n_params(m) == conv_weights + bn == 387_520
    assert m.out_channels == 64 + 128 + 32 + 192 == 416  # the pooling branch keeps all 192 input channels
    s = summarize(m, (192, 28, 28))
    assert s.total_macs == conv_weights * 28 * 28 == 303_464_448
    assert s.output_shape == [416, 28, 28]


def test_lenet5_has_the_papers_61706_parameters_and_shapes():
    net = create_arch("lenet5")
    assert n_params(net) == 156 + 2416 + 48120 + 10164 + 850 == 61_706
    s = summarize(net, (1, 28, 28))
    shapes = {r.name: r.output_shape for r in s.rows}
    assert shapes["c1"] == [6, 28, 28] and shapes["s2"] == [6, 14, 14]
    assert shapes["c3"] == [16, 10, 10] and shapes["s4"] == [16, 5, 5] and shapes["c5"] == [120]


@pytest.mark.parametrize("name,reference", [
    ("resnet18", torchvision.models.resnet18),
    ("resnet34", torchvision.models.resnet34),
    ("resnet50", torchvision.models.resnet50),
])
def test_resnets_match_torchvision_parameter_counts(name, reference):
    with torch.device("meta"):  # shapes only: no memory, no initialisation time
        assert n_params(create_arch(name)) == n_params(reference())


def test_vgg16_with_the_papers_classifier_matches_torchvision():
    with torch.device("meta"):
        ours = create_arch("vgg16", pool_size=7, hidden=4096, batch_norm=False)
        assert n_params(ours) == n_params(torchvision.models.vgg16()) == 138_357_544


# --------------------------------------------------------------------------- the plain switch


def test_plain_block_really_removes_the_shortcut():
    torch.manual_seed(0)
    res, plain = BasicBlock(8, 8), BasicBlock(8, 8, plain=True)
    plain.load_state_dict(res.state_dict())  # identity shortcut: same parameters
    res.eval(), plain.eval()
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        f = res.residual(x)
        assert torch.allclose(res(x), torch.relu(f + x))
        assert torch.allclose(plain(x), torch.relu(f))
        assert not torch.allclose(res(x), plain(x))


def test_plain_network_is_the_residual_twin_without_shortcuts():
    torch.manual_seed(0)
    res, plain = create_arch("resnet20", width=8), create_arch("plain20", width=8)
    result = plain.load_state_dict(res.state_dict(), strict=False)
    assert not result.missing_keys  # every plain weight exists in the residual net
    assert result.unexpected_keys and all(".shortcut." in k for k in result.unexpected_keys)
    assert not any("shortcut" in n for n, _ in plain.named_parameters())
    assert all(b.plain for stage in (plain.layer1, plain.layer2, plain.layer3) for b in stage)
    res.eval(), plain.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(res(x), plain(x), atol=1e-4)


# --------------------------------------------------------------------------- input sizes


@pytest.mark.parametrize("name,options", [
    ("resnet18", {"width": 8}), ("resnet50", {"width": 4}), ("resnet20", {"width": 4}),
    ("plain34", {"width": 4, "stem": "small"}), ("googlenet", {"width": 8}), ("inception_small_naive", {"width": 4}),
    ("vgg11", {"width": 4}), ("lenet5", {}),
])
@pytest.mark.parametrize("side", [28, 32, 105, 224])
def test_small_and_large_inputs_work(name, options, side):
    net = create_arch(name, num_classes=5, in_chans=1, **options).eval()
    with torch.no_grad():
        y = net(torch.randn(1, 1, side, side))
    assert tuple(y.shape) == (1, 5) and torch.isfinite(y).all()


# --------------------------------------------------------------------------- summaries


@pytest.mark.parametrize("label,shape,depth", [
    ("resnet50", (3, 64, 64), None),
    ("plain34", (3, 32, 32), 2),
    ("inception_small", (1, 28, 28), 1),
    ("googlenet", (3, 96, 96), 3),
    ("vgg11", (3, 32, 32), None),
    ("timm/resnet18", (3, 64, 64), None),
    ("timm/vit_tiny_patch16_224", (3, 224, 224), None),  # own parameters (cls token) and own matmuls (attention)
    ("timm/efficientnet_lite0", (3, 96, 96), 2),
])
def test_summary_totals_equal_the_sum_of_the_rows(label, shape, depth):
    ref = resolve_arch(label)
    net = create_network(ref, in_chans=shape[0])
    s = summarize(net, shape, depth=depth)
    assert s.total_params == n_params(net)
    assert sum(r.params for r in s.rows) == s.total_params
    assert sum(r.trainable for r in s.rows) == s.trainable_params
    assert sum(r.macs for r in s.rows) == s.total_macs > 0
    assert all(r.depth <= depth for r in s.rows) if depth else True


def test_summary_agrees_with_timm_on_the_same_network():
    ours = summarize(create_network(resolve_arch("resnet18")), (3, 224, 224))
    theirs = summarize(create_network(resolve_arch("timm/resnet18")), (3, 224, 224))
    assert ours.total_params == theirs.total_params == 11_689_512
    assert ours.total_macs == theirs.total_macs == 1_814_073_344  # the figure usually quoted as 1.8 GMACs


def test_names_prefer_the_project_and_timm_prefix_asks_for_timm():
    assert resolve_arch("resnet18") == ArchRef("resnet18", "transferkit")
    assert resolve_arch("timm/resnet18") == ArchRef("resnet18", "timm")
    assert resolve_arch("resnet18", prefer_timm=True) == ArchRef("resnet18", "timm")
    assert resolve_arch("efficientnet_lite0") == ArchRef("efficientnet_lite0", "timm")
    assert type(create_network(resolve_arch("resnet18"))).__module__ == "transferkit.archs.resnet"
    assert type(create_network(resolve_arch("timm/resnet18"))).__module__.startswith("timm.")


def test_predict_model_names_still_mean_timms_pretrained_networks(tmp_path):
    """`transferkit predict --model resnet18` resolves through the pretrained-weights registry, never the arch registry."""
    import timm
    from safetensors.torch import save_file

    import transferkit

    weights = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("resnet18").state_dict().items()}, str(weights))
    model = transferkit.load("resnet18", weights=weights)
    assert type(model.module).__module__.startswith("timm.")
    assert model.task == "pretrained" and len(model.class_names) == 1000
