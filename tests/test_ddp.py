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


def test_launcher_layout_reads_torchrun_and_srun(monkeypatch):
    from transferkit.core import engine

    for key in ("TORCHELASTIC_RUN_ID", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "SLURM_STEP_NUM_TASKS",
                "SLURM_STEP_NUM_NODES", "SLURM_JOB_NAME", "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)
    assert engine.launcher_layout() is None  # a plain process (Lightning's own launcher spawns ranks itself)
    monkeypatch.setenv("SLURM_NTASKS", "8")  # a batch script inside an allocation: not a launch
    assert engine.launcher_layout() is None
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "8")  # srun --nodes 2 --ntasks-per-node 4
    monkeypatch.setenv("SLURM_STEP_NUM_NODES", "2")
    assert engine.launcher_layout() == (4, 2)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")  # torchrun --nnodes 3 --nproc_per_node 2
    monkeypatch.setenv("WORLD_SIZE", "6")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert engine.launcher_layout() == (2, 3)
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun with one process: nothing distributed
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert engine.launcher_layout() is None


def test_other_ranks_read_rank_zero_features_instead_of_extracting(tmp_path, monkeypatch):
    """torchrun starts every rank at once: ranks 1.. wait for rank 0 to cache the features, then read them."""
    import threading

    import numpy as np

    from transferkit.core import featcache

    store = featcache.FeatureCache("key", tmp_path)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    rows = {"a": np.ones(3, np.float32), "b": np.zeros(3, np.float32)}
    timer = threading.Timer(1.0, store.put, args=(rows,))  # rank 0 finishes extracting a second later
    timer.start()
    found, todo = featcache._wait_for_rank_zero(store, ["a", "b"], {}, [0, 1])
    timer.join()
    assert todo == [] and sorted(found) == ["a", "b"] and found["a"].tolist() == [1.0, 1.0, 1.0]
    monkeypatch.setenv("RANK", "0")  # rank 0 itself computes what is missing
    assert featcache._wait_for_rank_zero(store, ["c"], {}, [0]) == ({}, [0])
