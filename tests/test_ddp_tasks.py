"""Every task family trains under DDP with two CPU processes (gloo), launched by Lightning (``--devices 2 --ddp``)
or by torchrun (issue 21): one exit status 0, one run folder written by rank 0 only (one model directory, each
metrics row once), a resumable run, and the same result class as a single process."""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import make_class_folders

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")]

DDP = ["--device", "cpu", "--devices", "2", "--ddp", "--precision", "32"]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def _seq2seq_data(root: Path) -> Path:
    rng = random.Random(0)
    root.mkdir(parents=True)
    lines = []
    for _ in range(120):
        s = "".join(rng.choice("abcde") for _ in range(rng.randint(2, 5)))
        lines.append(f"{s}\t{s[::-1]}\n")
    (root / "pairs.tsv").write_text("".join(lines), encoding="utf-8")
    return root / "pairs.tsv"


def _blobs(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for name, col in {"red": (220, 30, 30), "blue": (30, 30, 220)}.items():
        (root / name).mkdir(parents=True)
        for i in range(12):
            im = np.full((16, 16, 3), 255, np.uint8)
            cy, cx = rng.integers(4, 12, 2)
            yy, xx = np.mgrid[:16, :16]
            im[(yy - cy) ** 2 + (xx - cx) ** 2 <= 9] = col
            Image.fromarray(im).save(root / name / f"{i}.png")
    return root


def _detect_data(root: Path) -> Path:
    from tests.detect_data import make_boxes, write_voc

    return write_voc(root, make_boxes(16, size=64))


def _caption_data(root: Path) -> Path:
    from tests.caption_data import make_shapes

    return make_shapes(root, n_per=4, size=32)


def _faces(root: Path) -> Path:
    from tests.test_siamese import make_faces

    make_faces(root, 8, 4, seed=1)
    return root


# family -> (make data, the fit command after DATA --out RUN, the model folder it writes)
FAMILIES = {
    "classify": (lambda r: make_class_folders(r, n_per_class=6, size=24),
                 ["classify", "fit", "{data}", "--strategy", "finetune", "--backbone", "test_efficientnet", "--weights",
                  "none", "--image-size", "32", "--epochs", "1", "--batch-size", "4"], "model"),
    "autoencoder": (lambda r: "digits",
                    ["autoencoder", "fit", "{data}", "--kind", "dense", "--latent", "6", "--hidden", "32", "--epochs", "1",
                     "--max-images", "200"], "model"),
    "novelty": (lambda r: "digits",
                ["novelty", "fit", "{data}", "--method", "reconstruction", "--normal-classes", "0,1", "--latent", "4",
                 "--epochs", "1"], "autoencoder/model"),
    "siamese": (_faces, ["siamese", "fit", "{data}", "--image-size", "32", "--width", "0.5", "--embedding", "16",
                         "--epochs", "1", "--steps-per-epoch", "3", "--batch-size", "16", "--val-classes", "0.25",
                         "--augment-p", "0"], "model"),
    "seq2seq": (_seq2seq_data, ["seq2seq", "fit", "{data}", "--level", "char", "--hidden", "16", "--embed", "8",
                                "--epochs", "1", "--batch-size", "16"], "model"),
    "arch": (lambda r: "digits", ["arch", "compare", "lenet5", "--data", "{data}", "--image-size", "28", "--max-samples",
                                  "120", "--epochs", "1", "--batch-size", "16"], "lenet5/model"),
    "detect": (_detect_data, ["detect", "fit", "{data}", "--backbone", "test_efficientnet", "--weights", "none",
                              "--image-size", "64", "--epochs", "1", "--batch-size", "4"], "model"),
    "caption": (_caption_data, ["caption", "fit", "{data}", "--encoder", "test_efficientnet", "--weights", "none",
                                "--embed", "16", "--hidden", "32", "--min-count", "1", "--epochs", "1", "--batch-size",
                                "8"], "model"),
    "gan": (_blobs, ["gan", "fit", "{data}", "--kind", "dcgan", "--image-size", "16", "--width", "8", "--latent", "8",
                     "--epochs", "1", "--batch-size", "4", "--fid-samples", "8", "--feature-size", "64"], "model"),
}


def _command(family: str, data, run: Path) -> list[str]:
    args = [str(data) if a == "{data}" else a for a in FAMILIES[family][1]]
    return [*args, "--out", str(run)]


def _metric_rows(run: Path) -> list[dict]:
    files = sorted(run.rglob("metrics.csv"))
    assert files, f"no metrics.csv under {run}"
    return [row for f in files for row in csv.DictReader(f.open())]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_task_trains_under_ddp_with_two_cpu_processes(family, tmp_path, cli):
    make, _, model_sub = FAMILIES[family]
    data = make(tmp_path / "data")
    run = tmp_path / "run"
    r = cli(*_command(family, data, run), *DDP, env=ONE_THREAD, timeout=500)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "already holds files" not in r.stderr and "rank 1" not in r.stderr, r.stderr[-2000:]
    model_dirs = [p.parent.relative_to(run).as_posix() for p in run.rglob("config.json") if p.parent.name == "model"]
    assert model_dirs == [model_sub], model_dirs  # one model directory, where a single process writes it
    assert (run / "config.yaml").is_file() and not list(run.rglob("*.tmp"))
    rows = _metric_rows(run)
    keys = Counter((row.get("epoch"), row.get("step"), tuple(k for k, v in row.items() if v not in ("", None)))
                   for row in rows)
    assert rows and max(keys.values()) == 1, keys  # each metrics row written once (rank 0 logs)


def test_a_ddp_run_resumes_under_ddp(tmp_path, cli):
    data = make_class_folders(tmp_path / "data", n_per_class=6, size=24)
    run = tmp_path / "run"
    cmd = _command("classify", data, run)
    assert cli(*cmd, *DDP, env=ONE_THREAD, timeout=500).returncode == 0
    first = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    i = cmd.index("--epochs")
    cmd[i + 1] = "2"
    r = cli(*cmd, *DDP, "--resume", env=ONE_THREAD, timeout=500)
    assert r.returncode == 0, r.stderr[-3000:]
    second = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert second["epoch"] > first["epoch"] and second["global_step"] > first["global_step"]  # it went on
    assert (run / "model" / "model.safetensors").is_file() and "Nothing to resume" not in r.stderr


def test_ddp_gives_the_result_class_of_one_process(tmp_path, cli):
    """Autoencoder on the digits, deterministic: 2 processes x batch 16 against 1 process x batch 32 (the same
    global batch, the same steps): held-out MSE within 10 %."""
    base = ["autoencoder", "fit", "digits", "--kind", "dense", "--latent", "8", "--hidden", "64", "--epochs", "6",
            "--max-images", "600", "--device", "cpu", "--precision", "32"]
    one = cli(*base, "--batch-size", "32", "--out", tmp_path / "one", env=ONE_THREAD, timeout=500)
    two = cli(*base, "--batch-size", "16", "--devices", "2", "--ddp", "--out", tmp_path / "two", env=ONE_THREAD,
              timeout=500)
    assert one.returncode == 0 and two.returncode == 0, (one.stderr[-1500:], two.stderr[-1500:])
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())["mse"]
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())["mse"]
    assert abs(m2 - m1) / m1 < 0.1, (m1, m2)


def test_torchrun_launch_needs_no_ddp_flags(tmp_path):
    """torchrun starts both ranks itself; the CLI reads its variables (no --devices/--ddp), rank 1 prints nothing
    but errors, and rank 0 writes the run."""
    data = make_class_folders(tmp_path / "data", n_per_class=6, size=24)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "transferkit", *_command("classify", data, run), "--device", "cpu", "--precision", "32"]
    env = {**os.environ, **ONE_THREAD, "TRANSFERKIT_CACHE": str(tmp_path / "cache")}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=500)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (run / "model" / "model.safetensors").is_file() and (run / "report.html").is_file()
    assert r.stderr.count("validation accuracy") == 1  # rank 0 reports; rank 1 is quiet
