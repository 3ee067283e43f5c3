"""GAN task: network shapes, manual optimisation, conditional generation, pix2pix pairs and edges, FID/KID,
save/load, the collapse watch, the CLI.  Tiny generated data (16 px), tiny networks, precision "32"."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from transferkit.cli.main import main
from transferkit.errors import TransferkitError
from transferkit.tasks.gan import GANConfig, evaluate, fit, predict, sample, translate
from transferkit.tasks.gan import models
from transferkit.tasks.gan.data import canny_edges, read_pairs, split_side_by_side
from transferkit.tasks.gan.metrics import FeatureNet, fid, fid_report, fid_torchmetrics, kid
from transferkit.tasks.gan.module import DCGANModule, Pix2PixModule

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220)}


def blob(rng, colour, side=16):
    im = np.full((side, side, 3), 255, np.uint8)
    cy, cx = rng.integers(4, side - 4, 2)
    yy, xx = np.mgrid[:side, :side]
    im[(yy - cy) ** 2 + (xx - cx) ** 2 <= 9] = colour
    return im


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    """Two classes of two-colour blob images, 16 x 16."""
    root = tmp_path_factory.mktemp("blobs")
    rng = np.random.default_rng(0)
    for name, col in COLOURS.items():
        (root / name).mkdir()
        for i in range(24):
            Image.fromarray(blob(rng, col)).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Photo-like images with shapes (for edges): random rectangles on a gradient, 40 x 40."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(1)
    for i in range(12):
        im = np.tile(np.linspace(60, 200, 40, dtype=np.uint8)[None, :, None], (40, 1, 3))
        y, x = rng.integers(4, 24, 2)
        im[y : y + 12, x : x + 12] = (0, 0, 0) if i % 3 else (255, 255, 40)
        Image.fromarray(im.astype(np.uint8)).save(root / f"p{i}.jpg" if i % 2 else root / f"p{i}.png")
    return root


def tiny(**kw):
    base = dict(image_size=16, epochs=1, batch_size=8, width=8, latent=8, precision="32", fid_samples=8,
                feature_size=64, val_fraction=0.25, seed=0)
    base.update(kw)
    return GANConfig(**base)


@pytest.fixture(scope="module")
def dcgan_run(blobs, tmp_path_factory):
    return fit(tiny(conditional=True, epochs=2, fid=False), blobs, tmp_path_factory.mktemp("runs") / "cgan")


@pytest.fixture(scope="module")
def p2p_run(photos, tmp_path_factory):
    return fit(tiny(kind="pix2pix", edges=True, epochs=2, batch_size=4, fid_samples=4, val_fraction=0.34), photos,
               tmp_path_factory.mktemp("runs") / "p2p")


# --------------------------------------------------------------------------- networks


@pytest.mark.parametrize("size", [16, 28, 32, 48, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_dcgan_shapes(size, channels):
    g = models.DCGANGenerator(latent=10, channels=channels, size=size, width=4, num_classes=3)
    d = models.DCGANDiscriminator(channels, size, width=4, num_classes=3, spectral_norm=size == 32)
    y = torch.tensor([0, 2])
    x = g(torch.randn(2, 10), y)
    assert x.shape == (2, channels, size, size)
    assert float(x.detach().abs().max()) <= 1.0  # tanh
    assert d(x, y).shape == (2,)


@pytest.mark.parametrize("size", [16, 28])
def test_dcgan_blocks_add_depth_at_every_scale_and_rebuild_from_the_config(size):
    g0, g1 = models.DCGANGenerator(10, 1, size, width=4), models.DCGANGenerator(10, 1, size, width=4, blocks=2)
    d1 = models.DCGANDiscriminator(1, size, width=4, spectral_norm=True, blocks=2)
    convs = lambda m: sum(isinstance(x, torch.nn.Conv2d) for x in m.modules())  # noqa: E731
    n, _ = models.dcgan_plan(size)
    assert convs(g1) == convs(g0) + 2 * n  # 2 per scale: after the projection and after each inner up-sampling
    x = g1(torch.randn(3, 10))
    assert x.shape == (3, 1, size, size)
    d1(x).sum().backward()  # every parameter of both networks gets a gradient
    assert all(p.grad is not None for p in [*g1.parameters(), *d1.parameters()])
    conf = {"architecture": "dcgan", "latent": 10, "channels": 1, "image_size": size, "width": 4, "blocks": 2}
    rebuilt = models.build_generator(conf)
    rebuilt.load_state_dict(g1.state_dict())  # same layers, same names
    assert models.build_generator({**conf, "blocks": 0}).state_dict().keys() == g0.state_dict().keys()  # older models


def test_hinge_loss_values_and_both_networks_step():
    g, d = models.DCGANGenerator(8, 1, 16, 4), models.DCGANDiscriminator(1, 16, 4, spectral_norm=True)
    module = DCGANModule(g, d, loss="hinge")
    # real logits 2, 0 -> max(0, 1 - D) = 0, 1; fake logits -2, 0 -> max(0, 1 + D) = 0, 1
    assert float(module.d_loss(torch.tensor([2.0, 0.0]), torch.tensor([-2.0, 0.0]))) == pytest.approx(1.0)
    assert float(module.g_loss(torch.tensor([1.0, 3.0]))) == pytest.approx(-2.0)
    assert module.d_floor == 0.0
    g0, d0 = _params(g), _params(d)
    _run_steps(module, torch.utils.data.TensorDataset(torch.rand(8, 1, 16, 16) * 2 - 1, torch.zeros(8, dtype=torch.long)))
    assert module.gen_steps == 2 and _changed(g0, g) and _changed(d0, d)
    with pytest.raises(TransferkitError, match="--kind dcgan"):
        GANConfig(kind="pix2pix", loss="hinge").validate()
    with pytest.raises(TransferkitError, match="--blocks"):
        GANConfig(blocks=-1).validate()


def test_diff_augment_shifts_whole_pixels_passes_gradients_and_trains():
    from transferkit.tasks.gan.data import diff_augment

    x = torch.rand(64, 2, 16, 16, requires_grad=True)
    y = diff_augment(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    # every output image is its input shifted by whole pixels (at most 16/8 = 2), edges repeated
    for i in range(len(x)):
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if torch.equal(y[i], x[i].detach()[:, (torch.arange(16) + dy).clamp(0, 15)][:, :, (torch.arange(16) + dx).clamp(0, 15)])]
        assert found, f"image {i} is not a whole-pixel shift of its input"
    assert not torch.equal(y, x), "nothing was shifted"
    y.sum().backward()  # the generator's gradient flows through the gather
    assert float(x.grad.sum()) == pytest.approx(x.numel())
    g, d = models.DCGANGenerator(8, 1, 16, 4), models.DCGANDiscriminator(1, 16, 4, spectral_norm=True)
    module = DCGANModule(g, d, augment=True)
    g0, d0 = _params(g), _params(d)
    _run_steps(module, torch.utils.data.TensorDataset(torch.rand(8, 1, 16, 16) * 2 - 1, torch.zeros(8, dtype=torch.long)))
    assert module.gen_steps == 2 and _changed(g0, g) and _changed(d0, d)
    with pytest.raises(TransferkitError, match="--kind dcgan"):
        GANConfig(kind="pix2pix", diff_augment=True).validate()


@pytest.mark.parametrize("size", [16, 32, 64])
def test_pix2pix_shapes(size):
    g = models.UNetGenerator(1, 3, size, width=4)
    d = models.PatchDiscriminator(4, width=4, n_layers=models.patch_layers(size))
    a = torch.randn(2, 1, size, size)
    out = g(a)
    assert out.shape == (2, 3, size, size)
    patches = d(a, out)
    assert patches.shape[:2] == (2, 1) and patches.shape[2] == patches.shape[3] > 1


def test_bad_sizes_are_refused():
    with pytest.raises(TransferkitError, match="multiple of 4"):
        GANConfig(kind="dcgan", image_size=30).validate()
    with pytest.raises(TransferkitError, match="power of two"):
        GANConfig(kind="pix2pix", image_size=48).validate()


def test_time_budget_defaults_by_kind_and_zero_lifts_it():
    assert GANConfig(kind="dcgan").resolved_time_budget() == 12.0
    assert GANConfig(kind="pix2pix").resolved_time_budget() == 25.0
    assert GANConfig(kind="pix2pix", time_budget=3).resolved_time_budget() == 3.0
    assert GANConfig(kind="dcgan", time_budget=0).resolved_time_budget() is None
    with pytest.raises(TransferkitError, match="--time-budget"):
        GANConfig(kind="dcgan", time_budget=-1).validate()


def test_dcgan_defaults_to_width_32_with_one_block_and_pix2pix_keeps_its_recipe():
    assert (GANConfig(kind="dcgan").resolved_width(), GANConfig(kind="dcgan").resolved_blocks()) == (32, 1)
    assert (GANConfig(kind="pix2pix").resolved_width(), GANConfig(kind="pix2pix").resolved_blocks()) == (64, 0)
    assert GANConfig(kind="dcgan", width=64, blocks=0).resolved_blocks() == 0
    GANConfig(kind="pix2pix").validate()  # the dcgan-only default of --blocks is not an error for pix2pix


def test_dcgan_defaults_to_hinge_with_ttur_and_beta1_0_and_pix2pix_to_bce_at_equal_rates():
    dc, p2p = GANConfig(kind="dcgan"), GANConfig(kind="pix2pix")
    assert (dc.resolved_loss(), dc.resolved_ttur(), dc.d_lr, dc.resolved_beta1()) == ("hinge", True, 2 * dc.lr, 0.0)
    assert (p2p.resolved_loss(), p2p.resolved_ttur(), p2p.d_lr, p2p.resolved_beta1()) == ("bce", False, p2p.lr, 0.5)
    old = GANConfig(kind="dcgan", loss="bce", ttur=False, beta1=0.5)  # the recipe before the change, still reachable
    assert (old.resolved_loss(), old.d_lr, old.resolved_beta1()) == ("bce", old.lr, 0.5)
    with pytest.raises(TransferkitError, match="--beta1"):
        GANConfig(kind="dcgan", beta1=1.0).validate()
    assert GANConfig(kind="dcgan", lr_d=1e-4).d_lr == 1e-4  # an explicit rate wins over the TTUR default
    p2p.validate()
    GANConfig(kind="pix2pix", loss="bce").validate()


def test_label_smoothing_defaults_to_0_1_and_is_named_as_ignored_only_when_given_with_the_hinge_loss():
    assert GANConfig(kind="dcgan").resolved_label_smoothing() == GANConfig(kind="pix2pix").resolved_label_smoothing() == 0.1
    assert GANConfig(kind="dcgan").ignored_options() == []  # the defaults: hinge, smoothing not given
    assert GANConfig(kind="dcgan", loss="bce", label_smoothing=0.2).ignored_options() == []
    assert GANConfig(kind="dcgan", label_smoothing=0).ignored_options() == []  # 0 is what hinge does anyway
    (sentence,) = GANConfig(kind="dcgan", label_smoothing=0.2).ignored_options()
    assert "--label-smoothing 0.2" in sentence and "ignored" in sentence


def test_fit_trains_each_kind_with_its_resolved_adam_rates_and_betas(dcgan_run, p2p_run):
    for run, beta1 in ((dcgan_run, 0.0), (p2p_run, 0.5)):  # the optimiser states fit checkpointed
        ck = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        groups = [g for state in ck["optimizer_states"] for g in state["param_groups"]]
        assert {tuple(g["betas"]) for g in groups} == {(beta1, 0.999)}, run
        assert [g["lr"] for g in groups] == ([2e-4, 4e-4] if beta1 == 0.0 else [2e-4, 2e-4])  # (G, D): TTUR for dcgan


def test_generator_ema_is_on_by_default_for_both_kinds_and_zero_turns_it_off():
    assert GANConfig(kind="dcgan").ema_decay == GANConfig(kind="pix2pix").ema_decay == 0.999
    assert GANConfig(kind="pix2pix", ema=0).ema_decay == 0.0


# --------------------------------------------------------------------------- manual optimisation


def _params(m):
    return [p.detach().clone() for p in m.parameters()]


def _changed(before, m):
    return any(not torch.equal(b, p.detach()) for b, p in zip(before, m.parameters()))


def _run_steps(module, batches):
    import lightning.pytorch as pl

    trainer = pl.Trainer(max_epochs=1, precision="32", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(module, torch.utils.data.DataLoader(batches, batch_size=4))


def test_dcgan_optimisers_own_their_network_and_both_step():
    g = models.DCGANGenerator(8, 1, 16, 4)
    d = models.DCGANDiscriminator(1, 16, 4, spectral_norm=True)
    module = DCGANModule(g, d, label_smoothing=0.1, ema=0.9)
    opt_g, opt_d = module.configure_optimizers()
    ids = lambda opt: {id(p) for grp in opt.param_groups for p in grp["params"]}  # noqa: E731
    assert ids(opt_g) == {id(p) for p in g.parameters()}
    assert ids(opt_d) == {id(p) for p in d.parameters()}
    assert not ids(opt_g) & ids(opt_d)
    assert opt_g.param_groups[0]["betas"][0] == 0.5 and opt_g.param_groups[0]["lr"] == 2e-4
    assert opt_d.param_groups[0]["betas"] == (0.5, 0.999)  # Adam's beta2 unless given
    assert DCGANModule(g, d, beta1=0.0, beta2=0.9).configure_optimizers()[1].param_groups[0]["betas"] == (0.0, 0.9)
    g0, d0, e0 = _params(g), _params(d), _params(module.g_ema)
    data = torch.utils.data.TensorDataset(torch.rand(8, 1, 16, 16) * 2 - 1, torch.zeros(8, dtype=torch.long))
    _run_steps(module, data)
    assert module.gen_steps == 2
    assert _changed(g0, g) and _changed(d0, d) and _changed(e0, module.g_ema)


@pytest.mark.parametrize("classes", [0, 3])
def test_ema_batch_norm_statistics_are_recomputed_from_the_averaged_weights(classes):
    g = models.DCGANGenerator(8, 1, 16, 4, num_classes=classes)
    module = DCGANModule(g, models.DCGANDiscriminator(1, 16, 4, num_classes=classes), ema=0.9)
    bn = next(m for m in module.g_ema.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.running_mean.fill_(100.0)  # stale statistics, as borrowed from the live generator
    bn.running_var.fill_(100.0)
    seen = []
    hook = bn.register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    module.g_ema.eval()
    module.recalibrate_ema(batches=3, batch=8)
    hook.remove()
    x = torch.cat(seen)  # (24, C, s, s): every activation the statistics were computed from
    assert len(seen) == 3 and x.shape[0] == 24
    assert torch.allclose(bn.running_mean, x.mean((0, 2, 3)), atol=1e-5)
    per_batch = torch.stack([b.var((0, 2, 3), unbiased=True) for b in seen])  # the average of the batches' variances
    assert torch.allclose(bn.running_var, per_batch.mean(0), rtol=1e-4, atol=1e-6)
    assert bn.momentum == 0.1 and not module.g_ema.training  # momentum and mode restored


def test_pix2pix_ema_batch_norm_statistics_come_from_the_given_inputs_with_dropout_off():
    torch.manual_seed(0)
    g = models.UNetGenerator(1, 3, 32, 4)  # 32 px: deep enough for dropout
    module = Pix2PixModule(g, models.PatchDiscriminator(4, 4, models.patch_layers(32)), ema=0.9)
    module.recalibrate_ema()  # no inputs: pix2pix's statistics are left as they are
    bn = next(m for m in module.g_ema.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert torch.all(bn.running_mean == 0)
    drop = [m for m in module.g_ema.modules() if isinstance(m, torch.nn.Dropout)]
    assert drop
    seen, modes = [], []
    hook = bn.register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    hooks = [m.register_forward_hook(lambda m, i, o: modes.append(m.training)) for m in drop]
    inputs = torch.rand(20, 1, 32, 32) * 2 - 1
    module.recalibrate_ema(batch=8, inputs=inputs)
    hook.remove()
    for h in hooks:
        h.remove()
    assert [len(b) for b in seen] == [8, 8, 4]  # every input once, in batches
    per_batch = torch.stack([b.mean((0, 2, 3)) for b in seen])  # the average of the batches' means
    assert torch.allclose(bn.running_mean, per_batch.mean(0), atol=1e-6)
    assert modes and not any(modes)  # dropout off while the statistics are taken
    assert module.g_ema.training  # mode restored (the module was built in train mode)


def test_pix2pix_steps_both_and_l1_only_leaves_d_alone():
    for adv in (1.0, 0.0):
        g = models.UNetGenerator(1, 3, 16, 4)
        d = models.PatchDiscriminator(4, 4, 1)
        module = Pix2PixModule(g, d, adv_weight=adv)
        g0, d0 = _params(g), _params(d)
        data = torch.utils.data.TensorDataset(torch.rand(8, 1, 16, 16) * 2 - 1, torch.rand(8, 3, 16, 16) * 2 - 1)
        _run_steps(module, data)
        assert _changed(g0, g)
        assert _changed(d0, d) == (adv > 0)


def test_collapse_watch_reports_a_winning_discriminator(capsys):
    module = DCGANModule(models.DCGANGenerator(8, 1, 16, 4), models.DCGANDiscriminator(1, 16, 4), collapse_steps=5)
    for _ in range(4):
        module.watch(1e-4, 0.0)
    module.watch(0.5, 0.0)  # a healthy step resets the streak
    assert module.collapse is None
    for _ in range(5):
        module.watch(1e-4, 0.0)
    assert module.collapse is not None and module.collapse["steps"] == 5
    assert "discriminator has won" in capsys.readouterr().err
    smoothed = DCGANModule(models.DCGANGenerator(8, 1, 16, 4), models.DCGANDiscriminator(1, 16, 4), label_smoothing=0.1)
    assert smoothed.d_floor == pytest.approx(0.325, abs=1e-3)  # the lowest loss reachable with target 0.9


def test_conditional_generator_follows_the_label():
    torch.manual_seed(0)
    g = models.DCGANGenerator(8, 3, 16, 8, num_classes=2).eval()
    z = torch.randn(4, 8)
    a, b = g(z, torch.zeros(4, dtype=torch.long)), g(z, torch.ones(4, dtype=torch.long))
    assert (a - b).abs().mean() > 0.1 * a.abs().mean()  # the label changes the image as much as z does
    assert torch.equal(a, g(z, torch.zeros(4, dtype=torch.long)))


# --------------------------------------------------------------------------- pix2pix data


def test_side_by_side_and_direction(tmp_path):
    left = np.zeros((20, 20, 3), np.uint8)
    right = np.full((20, 20, 3), 200, np.uint8)
    for i in range(3):
        Image.fromarray(np.concatenate([left, right], axis=1)).save(tmp_path / f"{i}.png")
    a, b = split_side_by_side(np.concatenate([left, right], axis=1))
    assert a.max() == 0 and b.min() == 200
    ab = read_pairs(tmp_path, 16)
    assert ab.layout == "side-by-side" and ab.a.max() == 0 and ab.b.min() == 200
    ba = read_pairs(tmp_path, 16, direction="BtoA")
    assert ba.a.min() == 200 and ba.b.max() == 0


def test_a_b_folders_pair_by_name(tmp_path):
    (tmp_path / "A").mkdir()
    (tmp_path / "B").mkdir()
    for i, v in enumerate((10, 90, 170)):
        Image.fromarray(np.full((16, 16), v, np.uint8)).save(tmp_path / "A" / f"x{i}.png")
        Image.fromarray(np.full((16, 16, 3), 255 - v, np.uint8)).save(tmp_path / "B" / f"x{i}.jpg")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "A" / "lonely.png")
    p = read_pairs(tmp_path, 16)
    assert p.layout == "A/B folders" and p.names == ["x0", "x1", "x2"]
    assert p.a.ndim == 3  # grey A stays one channel
    assert np.all(np.abs(p.a.mean(axis=(1, 2)) + p.b.mean(axis=(1, 2)) - 255) < 3)


def test_edges_pairs_line_up_with_their_photos(photos):
    p = read_pairs(photos, 32, edges=True)
    assert p.layout == "edges" and len(p) == 12
    for a, b in zip(p.a, p.b):
        assert np.array_equal(a, canny_edges(b))  # the edges of that very photo
        assert a.min() == 0 and a.max() == 255  # black lines on white


def test_pairs_errors(tmp_path):
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "square.png")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "square2.png")
    with pytest.raises(TransferkitError, match="side-by-side"):
        read_pairs(tmp_path, 16)


# --------------------------------------------------------------------------- FID / KID


def test_fid_kid_of_a_set_with_itself_and_a_shifted_set():
    torch.manual_seed(0)
    f = torch.randn(200, 16, dtype=torch.float64)
    assert fid(f, f) < 1e-6
    assert fid(f, f + 1.0) == pytest.approx(16.0, rel=0.05)  # |mean difference|^2
    assert kid(f, f + 1.0)[0] > 10 * abs(kid(f[:100], f[100:])[0])
    g = torch.randn(150, 16, dtype=torch.float64) @ torch.randn(16, 16, dtype=torch.float64) + 0.3
    assert fid(f, g) == pytest.approx(fid_torchmetrics(f, g), rel=1e-4)  # torchmetrics' value, faster


def test_fid_on_offline_image_features(blobs):
    fn = FeatureNet("efficientnet_lite0", size=64)  # EfficientNet needs >= 64 px to see 16 px blobs
    rng = np.random.default_rng(3)

    def images(colour):
        return torch.from_numpy(np.stack([blob(rng, COLOURS[colour]) for _ in range(24)])).permute(0, 3, 1, 2) / 127.5 - 1

    red, red2, blue = fn(images("red")), fn(images("red")), fn(images("blue"))
    assert fid(red, red) < 1e-3
    r = fid_report(torch.cat([red, red2]), blue)
    assert r["fid"] > 3 * r["fid_floor"] and r["n_real"] == r["n_fake"] == 24


# --------------------------------------------------------------------------- runs, save/load, predict


def test_dcgan_run_folder(dcgan_run):
    for name in ("config.yaml", "split.json", "steps.csv", "metrics.json", "report.html", "model/config.json",
                 "model/model.safetensors", "samples/epoch_000.png", "samples/epoch_002.png", "samples/final.png"):
        assert (dcgan_run / name).is_file(), name
    res = json.loads((dcgan_run / "metrics.json").read_text())
    assert res["steps"] == 2 * (36 // 8) and res["n_train"] == 36  # 2 epochs, full batches only
    html = (dcgan_run / "report.html").read_text()
    assert "data-file='losses.png'" in html and "data-file='epoch_002.png'" in html
    conf = json.loads((dcgan_run / "model" / "config.json").read_text())
    assert conf["task"] == "gan" and conf["conditional"] and conf["classes"] == ["blue", "red"]


def test_saved_generator_samples_the_same_grid_in_a_fresh_process(dcgan_run, tmp_path):
    here = sample(dcgan_run, n=8, out=tmp_path / "a.png", seed=5)[0]
    code = ("import sys; from transferkit.tasks.gan import sample; "
            f"sample({str(dcgan_run)!r}, n=8, out={str(tmp_path / 'b.png')!r}, seed=5)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
    assert here.read_bytes() == (tmp_path / "b.png").read_bytes()
    other = sample(dcgan_run, n=8, out=tmp_path / "c.png", seed=6)[0]
    assert other.read_bytes() != here.read_bytes()
    files = sample(dcgan_run, n=3, out=tmp_path / "each", label="red")
    assert len(files) == 3 and Image.open(files[0]).size == (16, 16)
    strip = sample(dcgan_run, n=5, out=tmp_path / "walk.png", interpolate=True)[0]
    assert Image.open(strip).size[0] > Image.open(strip).size[1]


def test_predict_contract(dcgan_run, p2p_run, photos):
    rows = predict(dcgan_run, ["red", "blue"])
    assert [r["label"] for r in rows] == ["red", "blue"]
    img = Image.open(io.BytesIO(base64.b64decode(rows[0]["png_base64"])))
    assert img.size == (16, 16)
    json.dumps(rows)
    rows = predict(p2p_run, [str(photos / "p0.png")])
    assert rows[0]["path"].endswith("p0.png") and Image.open(io.BytesIO(base64.b64decode(rows[0]["png_base64"]))).mode == "RGB"
    served = predict(p2p_run, [("upload.png", Image.open(photos / "p0.png"))])  # what `transferkit serve` passes
    assert served[0]["png_base64"] == rows[0]["png_base64"]


def test_pix2pix_run_translate_and_eval(p2p_run, photos, tmp_path):
    assert (p2p_run / "samples" / "epoch_001.png").is_file()
    res = json.loads((p2p_run / "metrics.json").read_text())
    assert {"fid", "fid_floor", "l1", "psnr", "ssim"} <= set(res)
    out = translate(p2p_run, [photos], tmp_path / "out")
    assert len(out) == 12 and Image.open(out[0]).size == (16, 16)
    r = evaluate(p2p_run, photos, feature_size=64)
    assert r["split"] == "held-out" and {"fid", "kid", "fid_floor", "n_real", "n_fake", "l1", "psnr", "ssim"} <= set(r)


def test_cli_sample_eval_and_bad_input(dcgan_run, blobs, tmp_path, capsys):
    assert main(["gan", "sample", str(dcgan_run), "--n", "4", "--out", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").is_file()
    capsys.readouterr()
    assert main(["gan", "eval", str(dcgan_run), str(blobs), "--feature-size", "64", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert {"fid", "kid", "fid_floor", "n_real", "n_fake"} <= set(res)
    for argv, words in (
        (["gan", "fit", str(tmp_path / "missing"), "--out", str(tmp_path / "r")], "No such"),
        (["gan", "fit", str(blobs), "--out", str(tmp_path / "r"), "--image-size", "30"], "multiple of 4"),
        (["gan", "sample", str(dcgan_run), "--out", str(tmp_path / "x.png"), "--label", "green"], "Unknown --label"),
        (["gan", "translate", str(dcgan_run), str(blobs), "--out", str(tmp_path / "t")], "DCGAN model"),
        (["gan", "fit", str(blobs), "--out", str(tmp_path / "r"), "--kind", "pix2pix"], "side-by-side"),
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and words in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_training_steps_lower_the_fid_of_the_untrained_generator(blobs, tmp_path):
    from transferkit.tasks.gan.train import generate, load_gan

    cfg = tiny(epochs=8, lr=2e-3, fid=False, val_fraction=0.0)  # 48 generator steps
    run = fit(cfg, blobs, tmp_path / "run")
    untrained = models.DCGANGenerator(cfg.latent, 3, 16, cfg.width, blocks=cfg.resolved_blocks())
    real = torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(blobs.rglob("*.png"))]))
    fn = FeatureNet("efficientnet_lite0", size=64)
    real_f = fn(real.permute(0, 3, 1, 2).float() / 127.5 - 1)
    z = torch.randn(48, cfg.latent, generator=torch.Generator().manual_seed(1))
    before = fid(real_f, fn(generate(untrained, z)))
    after = fid(real_f, fn(generate(load_gan(run)[0].module, z)))
    assert after < 0.85 * before, (before, after)
