"""Novelty detection: digits 0-4 normal vs 5-9 novel, threshold calibration, scoring files, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferkit.core.datasets import load_digits
from transferkit.errors import TransferkitError
from transferkit.tasks.novelty import NoveltyConfig, evaluate, fit, score

NORMAL = ("0", "1", "2", "3", "4")


@pytest.fixture(scope="module")
def recon_run(tmp_path_factory) -> Path:
    cfg = NoveltyConfig(normal_classes=NORMAL, hidden=(64, 32), latent=8, epochs=25, batch_size=32)
    return fit(cfg, "digits", tmp_path_factory.mktemp("nov") / "recon")


def test_reconstruction_novelty_auc_on_digits(recon_run, cli, tmp_path):
    state = json.loads((recon_run / "novelty.json").read_text())
    assert state["method"] == "reconstruction" and state["normal_classes"] == list(NORMAL)
    assert state["n_calibration"] == pytest.approx(0.2 * 901, abs=3)
    # the threshold is the 99th percentile of held-out normal scores: about 1% of them above it
    assert state["calibration"]["flagged"] <= 0.02
    proc = cli("novelty", "eval", recon_run, "digits", "--json", "--plot", tmp_path / "hist.png")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["roc_auc"] > 0.8, res
    # the training images are left out: held-out normal + every novel digit
    assert res["training_images_left_out"] == state["n_train"]
    assert res["n_normal"] == state["n_calibration"] and res["n_novel"] == 896
    assert res["normal_flagged"] <= 0.03 and res["novel_flagged"] > res["normal_flagged"]
    assert (tmp_path / "hist.png").is_file()
    assert (recon_run / "report.html").is_file() and (recon_run / "autoencoder" / "model" / "config.json").is_file()


def test_score_files_prints_a_verdict_per_image(recon_run, cli, tmp_path):
    d = load_digits()
    normal_i = int(np.flatnonzero(d.labels == 0)[0])
    files = []
    for name, img in (("zero.png", d.images[normal_i]), ("blank.png", np.full((8, 8), 255, np.uint8))):
        Image.fromarray(img).save(tmp_path / name)
        files.append(tmp_path / name)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    proc = cli("novelty", "score", recon_run, *files, tmp_path / "broken.png")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 and "broken.png" in proc.stderr
    verdicts = {Path(line.split()[-1]).name: line.split()[1] for line in lines}
    assert verdicts["blank.png"] == "NOVEL"  # an all-white square is nothing like a digit
    res = score(recon_run, files)
    assert res[0]["score"] < res[1]["score"] and res[1]["novel"] is True
    threshold = json.loads((recon_run / "novelty.json").read_text())["threshold"]
    assert all(r["novel"] == (r["score"] > threshold) for r in res)


def test_embedding_method_with_autoencoder_codes(tmp_path):
    from transferkit.tasks.autoencoder import AEConfig
    from transferkit.tasks.autoencoder import fit as ae_fit

    ae = ae_fit(AEConfig(kind="dense", hidden=(64,), latent=12, epochs=15, batch_size=32, max_images=600),
                "digits", tmp_path / "ae")
    run = fit(NoveltyConfig(method="embedding", model=str(ae), normal_classes=NORMAL, neighbours=3), "digits",
              tmp_path / "emb")
    state = json.loads((run / "novelty.json").read_text())
    assert state["method"] == "embedding" and state["neighbours"] == 3
    assert (run / "index" / "index.json").is_file()
    res = evaluate(run, "digits")
    assert res["roc_auc"] > 0.7, res


def test_bad_input_errors(tmp_path, cli):
    proc = cli("novelty", "fit", "digits", "--normal-classes", "0,x", "--out", tmp_path / "r")
    assert proc.returncode == 2 and "no class x" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("novelty", "score", tmp_path / "nothing", "a.png")
    assert proc.returncode == 2 and "not a novelty run" in proc.stderr
    with pytest.raises(TransferkitError, match="--percentile"):
        fit(NoveltyConfig(percentile=0), "digits", tmp_path / "p")
    with pytest.raises(TransferkitError, match="held-out normal"):
        fit(NoveltyConfig(val_fraction=0), "digits", tmp_path / "v")
