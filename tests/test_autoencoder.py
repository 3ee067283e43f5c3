"""Autoencoders: every kind learns, denoising denoises, greedy pretraining freezes, pictures, decode, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import make_class_folders
from transferkit.errors import TransferkitError
from transferkit.tasks.autoencoder import AEConfig, FinetuneConfig, decode, evaluate, finetune, fit
from transferkit.tasks.autoencoder.noise import NOISE_KINDS, corrupt

# small and quick: the 8x8 digits, a subset, a small network
SMALL = dict(hidden=(64, 32), channels=(8, 16), latent=8, epochs=12, batch_size=32, lr=3e-3, max_images=700)


def held_out(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


# --------------------------------------------------------------------------- noise


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_noise_kinds_corrupt_within_range(kind):
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    y = corrupt(x, kind, 0.3, torch.Generator().manual_seed(1))
    assert y.shape == x.shape
    assert float(y.min()) >= 0 and float(y.max()) <= 1
    changed = (y != x).any(dim=1).float().mean().item()  # fraction of pixels touched
    assert changed > 0.05, kind
    if kind in ("mask", "salt-pepper"):
        assert abs(changed - 0.3) < 0.08
    if kind == "bars":  # whole rows or columns are blanked
        blank_rows = (y == 0).all(dim=3).all(dim=1)
        blank_cols = (y == 0).all(dim=2).all(dim=1)
        assert blank_rows.any() and blank_cols.any()


def test_zero_noise_level_changes_nothing():
    x = torch.rand(2, 1, 8, 8)
    for kind in NOISE_KINDS:
        assert torch.equal(corrupt(x, kind, 0.0), x)


# --------------------------------------------------------------------------- every kind learns


@pytest.mark.parametrize("kind, extra", [
    ("dense", {}),
    ("conv", {}),
    ("denoising", {"noise": "mask"}),
    ("sparse", {}),
    ("stacked", {"layers": (48, 24, 8), "layer_epochs": 8, "unrolled_epochs": 8}),
])
def test_each_kind_beats_the_mean_image_on_held_out_digits(tmp_path, kind, extra):
    cfg = AEConfig(kind=kind, **{**SMALL, **extra})
    run = fit(cfg, "digits", tmp_path / kind)
    res = held_out(run)
    assert res["split"] == "held-out" and res["n"] == 140
    assert res["mse"] < 0.8 * res["mean_image_mse"], res
    if kind == "denoising":
        assert res["denoised_mse"] < res["noisy_mse"], res
    # what eval prints agrees with what fit measured on the same held-out rows
    again = evaluate(run, "digits")
    assert again["split"] == "held-out" and again["mse"] == pytest.approx(res["mse"], rel=1e-5)
    assert (run / "model" / "config.json").is_file() and (run / "report.html").is_file()


def test_gaussian_denoising_output_is_closer_to_clean_than_the_noisy_input(tmp_path):
    cfg = AEConfig(kind="denoising", noise="gaussian", noise_level=0.4, **SMALL)
    res = held_out(fit(cfg, "digits", tmp_path / "den"))
    assert res["denoised_mse"] < 0.7 * res["noisy_mse"], res


def test_kl_sparsity_drives_code_activations_to_the_target(tmp_path):
    import transferkit
    from transferkit.core.datasets import load_digits
    from transferkit.tasks.autoencoder.data import to_float

    cfg = AEConfig(kind="sparse", sparsity="kl", sparsity_target=0.05, sparsity_weight=0.1, **{**SMALL, "latent": 16})
    run = fit(cfg, "digits", tmp_path / "kl")
    res = held_out(run)
    assert res["mse"] < res["mean_image_mse"], res
    tm = transferkit.load(run)
    assert tm.config["code_activation"] == "sigmoid"
    with torch.no_grad():
        codes = tm.module.encode(to_float(load_digits().images[:300]))
    assert float(codes.min()) >= 0 and float(codes.max()) <= 1
    assert float(codes.mean()) < 0.12  # about 0.5 without the penalty


# --------------------------------------------------------------------------- greedy layer-wise


def test_greedy_pretraining_freezes_finished_layers(tmp_path):
    snaps: list[dict[str, torch.Tensor]] = []

    def snapshot(k, net):
        snaps.append({n: p.detach().clone() for n, p in net.state_dict().items()})

    from transferkit.tasks.autoencoder.models import DenseAE

    torch.manual_seed(0)
    cfg = AEConfig(kind="stacked", layers=(32, 16, 4), layer_epochs=3, unrolled_epochs=0, epochs=3, batch_size=64,
                   max_images=300, seed=3)
    run = fit(cfg, "digits", tmp_path / "stack", on_stage_end=snapshot)
    assert len(snaps) == 3

    def pair(state, k):
        return {n: v for n, v in state.items() if n.startswith((f"encoder.layers.{k}.", f"decoder.layers.{k}."))}

    fresh = DenseAE((1, 8, 8), (32, 16), 4).state_dict()  # shapes only; initial values differ per seed
    for k in range(3):
        done = pair(snaps[k], k)
        assert done and all(v.shape == fresh[n].shape for n, v in done.items())
        for later in snaps[k + 1:]:  # finished layer k never changes again
            for n, v in done.items():
                assert torch.equal(v, later[n]), f"layer {k} changed in a later stage ({n})"
        if k > 0:  # and stage k did train layer k (its weights differ from the previous snapshot)
            assert any(not torch.equal(v, snaps[k - 1][n]) for n, v in done.items())
    # the run records the same fact, and the report says so
    greedy = json.loads((run / "layers" / "greedy.json").read_text())
    assert [g["layer"] for g in greedy] == [1, 2, 3]
    assert greedy[0]["fingerprints"][0] == greedy[2]["fingerprints"][0]
    assert greedy[1]["fingerprints"][1] == greedy[2]["fingerprints"][1]
    assert "unchanged by later stages" in (run / "report.html").read_text()
    for k in (1, 2, 3):
        assert (run / "layers" / f"layer{k}" / "metrics.csv").is_file()


# --------------------------------------------------------------------------- pictures and decode


def test_latent_2_pictures_decode_and_report(tmp_path, cli):
    run = fit(AEConfig(kind="dense", **{**SMALL, "latent": 2, "epochs": 4}), "digits", tmp_path / "z2")
    for name in ("latent_scatter.png", "latent_grid.png", "reconstructions.png", "curves.png"):
        with Image.open(run / name) as im:
            assert im.size[0] > 100 and im.size[1] > 100, name
        assert f"data-file='{name}'" in (run / "report.html").read_text()
    out = decode(run, "0.5,-0.25", tmp_path / "z.png")
    with Image.open(out) as im:
        assert im.size == (8, 8) and im.mode == "L"
    with Image.open(decode(run, [0, 0], tmp_path / "big.png", scale=4)) as im:
        assert im.size == (32, 32)
    proc = cli("autoencoder", "decode", run, "--z", "0,1", "--out", tmp_path / "cli.png")
    assert proc.returncode == 0 and (tmp_path / "cli.png").is_file(), proc.stderr
    with pytest.raises(TransferkitError, match="needs 2 numbers"):
        decode(run, "1,2,3", tmp_path / "x.png")


def test_model_directory_round_trip_and_features(tmp_path):
    import transferkit

    run = fit(AEConfig(kind="conv", **{**SMALL, "epochs": 2}), "digits", tmp_path / "conv")
    tm = transferkit.load(run)
    assert tm.task == "autoencoder" and tm.architecture == "conv"
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        assert tm.module(x).shape == (3, 1, 8, 8)
        assert tm.module.encode(torch.rand(3, 3, 8, 8)).shape == (3, 8)  # RGB is turned into grey
    png = tmp_path / "digit.png"
    Image.fromarray((np.random.default_rng(0).random((8, 8)) * 255).astype(np.uint8)).save(png)
    fs = transferkit.features([png], model=run)
    assert fs.features.shape == (1, 8)
    with torch.no_grad():
        direct = tm.module.encode(torch.from_numpy(np.asarray(Image.open(png), dtype=np.float32) / 255)[None, None])
    assert np.allclose(fs.features[0], direct.numpy()[0], atol=1e-4)


def test_colorize_learns_grey_to_colour(tmp_path):
    folder = make_class_folders(tmp_path / "colours", n_per_class=20, size=16)
    cfg = AEConfig(kind="conv", colorize=True, size=(16, 16), latent=8, channels=(8, 16), epochs=15, batch_size=16,
                   lr=3e-3)
    run = fit(cfg, folder, tmp_path / "col")
    conf = json.loads((run / "model" / "config.json").read_text())
    assert conf["input_shape"] == [1, 16, 16] and conf["out_channels"] == 3 and conf["colorize"]
    res = held_out(run)
    assert res["pca_mse"] is not None and res["mse"] < res["mean_image_mse"], res
    with Image.open(run / "reconstructions.png") as im:
        assert im.size[1] > 150  # three rows: original, grey input, reconstruction


# --------------------------------------------------------------------------- finetune


def test_finetune_stacked_encoder_then_predict(tmp_path, cli):
    run = fit(AEConfig(kind="stacked", layers=(32, 16), layer_epochs=15, unrolled_epochs=5, batch_size=32,
                       max_images=800), "digits", tmp_path / "stack")
    cfg = FinetuneConfig(head_epochs=8, epochs=4, num_labelled=300, batch_size=32)
    out = finetune(run, "digits", tmp_path / "cls", cfg)
    res = json.loads((out / "metrics.json").read_text())
    assert res["n_train"] == 300 and res["n_test"] == 160  # the autoencoder run's held-out rows
    assert res["accuracy_head"] > 0.5 and res["accuracy"] > 0.6, res  # chance is 0.1
    assert (out / "head" / "metrics.csv").is_file() and (out / "confusion.png").is_file()
    png = tmp_path / "d.png"
    from transferkit.core.datasets import load_digits

    d = load_digits()
    Image.fromarray(d.images[0]).save(png)
    proc = cli("predict", png, "--model", out, "--json", "--top-k", "3")
    assert proc.returncode == 0, proc.stderr
    top = json.loads(proc.stdout.splitlines()[0])["top"]
    assert len(top) == 3 and {t["label"] for t in top} <= set("0123456789")


# --------------------------------------------------------------------------- CLI and bad input


def test_cli_fit_eval_json(tmp_path, cli):
    proc = cli("autoencoder", "fit", "digits", "--out", tmp_path / "r", "--kind", "dense", "--latent", "6",
               "--hidden", "32", "--epochs", "3", "--max-images", "300")
    assert proc.returncode == 0, proc.stderr
    assert "PCA-6" in proc.stdout
    ev = cli("autoencoder", "eval", tmp_path / "r", "digits", "--json")
    assert ev.returncode == 0, ev.stderr
    res = json.loads(ev.stdout)
    assert list(res)[:3] == ["mse", "pca_mse", "psnr"]
    assert res["psnr"] == pytest.approx(10 * np.log10(1 / res["mse"]))
    split = json.loads((tmp_path / "r" / "split.json").read_text())
    assert res["n"] == len(split["held_out"]) == 300 - split["n_train"] and res["split"] == "held-out"
    with pytest.raises(TransferkitError, match="--resume"):  # a finished run is never overwritten
        fit(AEConfig(epochs=1), "digits", tmp_path / "r")


@pytest.mark.parametrize("settings, message", [
    ({"latent": 100}, "larger than the input"),
    ({"kind": "stacked", "layers": (30, 50)}, "must shrink"),
    ({"kind": "stacked", "layers": (80, 30)}, "must shrink from the input size 64"),
    ({"layers": (30, 10)}, "--layers is for --kind stacked"),
    ({"kind": "conv", "colorize": True}, "needs colour images"),
    ({"hidden": (32, 64)}, "must not grow"),
    ({"threads": 0}, "--threads must be at least 1"),
])
def test_bad_settings_give_one_clear_error(tmp_path, settings, message):
    with pytest.raises(TransferkitError, match=message):
        fit(AEConfig(epochs=1, **settings), "digits", tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # nothing is created for a run that cannot start


def test_bad_input_on_the_command_line(tmp_path, cli):
    (tmp_path / "empty" / "a").mkdir(parents=True)
    proc = cli("autoencoder", "fit", tmp_path / "empty", "--out", tmp_path / "r")
    assert proc.returncode == 2 and "No images found" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("autoencoder", "fit", "digits", "--out", tmp_path / "r", "--kind", "stacked", "--layers", "30,50")
    assert proc.returncode == 2 and "must shrink" in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(TransferkitError, match="No such file or folder"):
        fit(AEConfig(), tmp_path / "missing", tmp_path / "r2")


def test_resume_continues_an_interrupted_run(tmp_path):
    from transferkit.core.engine import metrics_by_epoch

    small = dict(hidden=(32,), latent=4, batch_size=64, max_images=300)
    fit(AEConfig(epochs=2, **small), "digits", tmp_path / "r")
    fit(AEConfig(epochs=4, **small), "digits", tmp_path / "r", resume=True)
    assert [e for e, _ in metrics_by_epoch(tmp_path / "r")["train_loss"]] == [0, 1, 2, 3]
    with pytest.raises(TransferkitError, match="Nothing to resume"):
        fit(AEConfig(epochs=2, **small), "digits", tmp_path / "other", resume=True)
