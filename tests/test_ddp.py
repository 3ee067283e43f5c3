"""DDP with two CPU processes (gloo): Lightning's launcher re-runs the command for rank 1, which must not trip the
run-folder guard (issue 21: before, rank 1 stopped with "already holds files" and rank 0 waited forever)."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from tests.conftest import make_class_folders

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")


def test_process_rank_reads_every_launcher(monkeypatch):
    from transferkit.core import engine

    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert engine.process_rank() == 0 and engine.is_rank_zero()
    monkeypatch.setenv("LOCAL_RANK", "1")  # Lightning's launcher, second process
    assert engine.process_rank() == 1 and not engine.is_rank_zero()
    monkeypatch.setenv("RANK", "0")  # torchrun: RANK is the global rank and wins
    assert engine.is_rank_zero()
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.setenv("SLURM_PROCID", "3")  # srun
    assert engine.process_rank() == 3


@pytest.mark.slow
def test_classify_finetune_under_ddp_two_cpu_processes(tmp_path, cli):
    data = make_class_folders(tmp_path / "data", n_per_class=8, size=24)
    run = tmp_path / "run"
    r = cli("classify", "fit", data, "--out", run, "--strategy", "finetune", "--device", "cpu", "--devices", "2", "--ddp",
            "--backbone", "test_efficientnet", "--weights", "none", "--image-size", "32", "--epochs", "2",
            "--batch-size", "4", "--precision", "32", timeout=420)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "already holds files" not in r.stderr
    assert (run / "model" / "model.safetensors").is_file() and (run / "report.html").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert 0.0 <= summary["val_accuracy"] <= 1.0
    # rank 0 logged and checkpointed real training steps: 19 training images sharded over 2 ranks, batches of 4
    assert (run / "checkpoints" / "last.ckpt").is_file()
    steps = [int(r["step"]) for r in csv.DictReader((run / "metrics.csv").open()) if r.get("train_loss")]
    assert steps and max(steps) >= 2
    # the run folder is still guarded for a second, non-resumed fit
    again = cli("classify", "fit", data, "--out", run, "--strategy", "finetune", "--device", "cpu", "--backbone",
                "test_efficientnet", "--weights", "none", "--image-size", "32", "--epochs", "1")
    assert again.returncode != 0 and "already holds files" in again.stderr
