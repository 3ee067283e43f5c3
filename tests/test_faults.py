"""The fault matrix (FAULTS.md): one test per row, on tiny generated data and tiny models.

Process-level behaviour (signals, ``kill -9``, exit statuses) runs in real subprocesses: the
``transferkit`` CLI for classify, ``python -m tests.faults_tiny`` for the engine on its own.
Everything else runs in-process through ``transferkit.core.engine`` with the tiny module of
tests/faults_tiny.py, so the whole matrix takes well under two minutes on two cores.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tests import faults_tiny
from tests.conftest import ROOT, make_class_folders, transferkit_cmd
from transferkit.errors import RunInterrupted, TrainingDiverged, TransferkitError

ONE_THREAD = {"OMP_NUM_THREADS": "1", "TRANSFERKIT_PROGRESS": "0"}
TINY_FLAGS = ["--backbone", "test_efficientnet", "--weights", "none", "--image-size", "32", "--batch-size", "4",
              "--precision", "32"]


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TRANSFERKIT_PROGRESS", "0")
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the subprocesses run with one thread too: same kernels, same bits
    yield
    torch.set_num_threads(n)


def _env_for_subprocess(tmp_path) -> dict:
    pp = os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, **ONE_THREAD, "TRANSFERKIT_CACHE": str(tmp_path / "cache"), "PYTHONPATH": pp}


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the process ended ({proc.returncode}) before {path} appeared:\n"
                                 + proc.stderr.read()[-3000:])
        if time.time() > deadline:
            proc.kill()
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.02)


def _tiny_script(tmp_path, run: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.faults_tiny", str(run), *args], env=_env_for_subprocess(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def _weights(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


class SelfSignal:
    """A callback that sends this process a signal at (epoch, batch) (batch -1: at the end of that epoch)."""

    def __new__(cls, epoch: int, batch: int, sig=signal.SIGINT):
        import lightning.pytorch as pl

        class _Cb(pl.Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, b, batch_idx):
                if batch >= 0 and trainer.current_epoch == epoch and batch_idx == batch:
                    os.kill(os.getpid(), sig)

            def on_train_epoch_end(self, trainer, pl_module):
                if batch < 0 and trainer.current_epoch == epoch:
                    os.kill(os.getpid(), sig)

        return _Cb()


# --------------------------------------------------------------------------- SIGINT / SIGTERM


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    return make_class_folders(tmp_path_factory.mktemp("faults") / "colours", n_per_class=8, size=36)


def test_sigint_mid_fit_exits_130_and_resume_matches_an_uninterrupted_run(tmp_path, colours):
    """Row: SIGINT (Ctrl-C) mid-fit. One line (what was kept, the exact --resume command), exit 130, no model
    saved; the printed command finishes the run with the same weights as a run never interrupted."""
    from safetensors.torch import load_file

    from transferkit.tasks.classify import ClassifyConfig, fit

    epochs = 4
    run = tmp_path / "run"
    args = ["classify", "fit", str(colours), "--out", str(run), "--strategy", "finetune", "--epochs", str(epochs),
            *TINY_FLAGS]
    env = _env_for_subprocess(tmp_path)
    proc = subprocess.Popen([*transferkit_cmd(), *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    _wait_for(run / "checkpoints" / "last.ckpt", proc)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("interrupted (Ctrl-C) in epoch") and "last.ckpt" in line and "Traceback" not in err
    assert "the interrupted epoch restarts" in line
    command = line.split("continue with: ")[1]
    assert command.endswith("--resume") and f"--out {run}" in command
    assert not (run / "model").exists()  # nothing half-trained is passed off as the result
    assert _ckpt(run / "checkpoints" / "last.ckpt")["epoch"] < epochs - 1

    r = subprocess.run(command.replace("transferkit ", " ".join(transferkit_cmd()) + " ", 1), shell=True, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    resumed = load_file(run / "model" / "model.safetensors")

    whole = fit(ClassifyConfig(strategy="finetune", epochs=epochs, backbone="test_efficientnet", weights="none",
                               image_size=32, batch_size=4, precision="32"), colours, tmp_path / "whole")
    straight = load_file(whole / "model" / "model.safetensors")
    assert _same(resumed, straight), "resuming after Ctrl-C changed the final weights"


def test_sigterm_mid_fit_exits_143_and_a_second_signal_exits_at_once(tmp_path):
    """Row: SIGTERM mid-fit (preemption): as Ctrl-C, exit status 143. And: a second Ctrl-C exits at once."""
    run = tmp_path / "term"
    proc = _tiny_script(tmp_path, run, "--epochs", "50", "--sleep", "0.02")
    _wait_for(run / "checkpoints" / "last.ckpt", proc)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 143, err
    assert "interrupted (SIGTERM)" in err and "last.ckpt" in err
    assert _ckpt(run / "checkpoints" / "last.ckpt")["epoch"] >= 0

    run2 = tmp_path / "twice"
    proc = _tiny_script(tmp_path, run2, "--epochs", "50", "--sleep", "20")  # one batch takes 20 s
    _wait_for(run2 / "in_step", proc)  # the first batch is running
    t0 = time.time()
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=30)[1]
    assert proc.returncode == 130 and time.time() - t0 < 10, err
    assert "stopping after this batch" in err and "again: stopping now" in err


def test_kill_9_while_a_checkpoint_is_written_keeps_the_previous_one(tmp_path):
    """Row: kill -9 while a checkpoint is being written. The previous last.ckpt stays loadable, --resume uses it,
    the half-written temporary is removed on resume."""
    run = tmp_path / "run"
    proc = _tiny_script(tmp_path, run, "--epochs", "4", "--slow-save", "2")  # the 2nd save stalls after writing
    _wait_for(run / "saving", proc)
    proc.kill()
    proc.wait()
    ck = run / "checkpoints"
    tmps = list(ck.glob(".*.tmp"))
    assert tmps, "the stalled write left no temporary file (the test did not hit the write)"
    assert _ckpt(ck / "last.ckpt")["epoch"] == 0  # the first epoch's checkpoint, intact
    trainer, module = faults_tiny.train(run, epochs=4, resume=True)
    assert trainer.current_epoch == 4 and not list(ck.glob(".*.tmp"))


def test_resume_at_an_epoch_boundary_is_bit_exact(tmp_path):
    """Row: resume at an epoch boundary. Weights, optimiser, scheduler and random state as in one straight run."""
    _, whole = faults_tiny.train(tmp_path / "whole", epochs=4)
    with pytest.raises(RunInterrupted) as info:
        faults_tiny.train(tmp_path / "cut", epochs=4, callbacks=[SelfSignal(epoch=1, batch=-1)])
    assert info.value.checkpoint and info.value.epoch == 3  # stopped before epoch 3's first step
    trainer, resumed = faults_tiny.train(tmp_path / "cut", epochs=4, resume=True)
    assert _same(_weights(resumed), _weights(whole))
    a, b = _ckpt(tmp_path / "whole/checkpoints/last.ckpt"), _ckpt(tmp_path / "cut/checkpoints/last.ckpt")
    for key in ("optimizer_states", "lr_schedulers"):
        assert repr(a[key]) == repr(b[key]), key
    assert torch.equal(a["transferkit_rng"]["torch"], b["transferkit_rng"]["torch"])
    assert a["global_step"] == b["global_step"]


def test_resume_mid_epoch_restarts_that_epoch_exactly(tmp_path):
    """Row: resume mid-epoch. The interrupted epoch restarts from the last epoch-boundary checkpoint (the message
    says so): no sample skipped or counted twice, so the result equals a straight run."""
    _, whole = faults_tiny.train(tmp_path / "whole", epochs=3)
    with pytest.raises(RunInterrupted) as info:
        faults_tiny.train(tmp_path / "cut", epochs=3, callbacks=[SelfSignal(epoch=1, batch=2)])
    assert "epoch 2" in str(info.value) and "restarts" in str(info.value)
    trainer, resumed = faults_tiny.train(tmp_path / "cut", epochs=3, resume=True)
    assert _same(_weights(resumed), _weights(whole))
    assert trainer.global_step == 3 * 6  # 96 samples / 16 per batch, 3 epochs


# --------------------------------------------------------------------------- damaged files


@pytest.mark.parametrize("damage", ["zero-byte", "truncated", "foreign"])
def test_damaged_checkpoint_resume_falls_back_to_the_previous_good_one(tmp_path, damage, capsys):
    """Row: truncated / zero-byte / foreign checkpoint: one clear line; resume falls back to best.ckpt."""
    run = tmp_path / "run"
    faults_tiny.train(run, epochs=2)
    last = run / "checkpoints" / "last.ckpt"
    if damage == "zero-byte":
        last.write_bytes(b"")
    elif damage == "truncated":
        last.write_bytes(last.read_bytes()[:2000])
    else:
        last.write_bytes(b"PK\x03\x04 this is not a checkpoint" * 10)
    capsys.readouterr()
    trainer, _ = faults_tiny.train(run, epochs=3, resume=True)
    assert trainer.current_epoch == 3
    warning = capsys.readouterr().err
    assert "last.ckpt cannot be read" in warning and "resuming from" in warning and "best.ckpt" in warning
    # with no good checkpoint left: one sentence, nothing trained
    (run / "checkpoints" / "best.ckpt").write_bytes(b"")
    last.write_bytes(b"")
    with pytest.raises(TransferkitError, match="no other good checkpoint"):
        faults_tiny.train(run, epochs=4, resume=True)


@pytest.mark.parametrize("damage", ["zero-byte", "truncated", "foreign-config", "wrong-shapes"])
def test_damaged_model_directory_gives_one_clear_line(tmp_path, damage):
    """Row: truncated / zero-byte / foreign model file."""
    from transferkit.core.modeldir import load

    d = _tiny_model_dir(tmp_path / "m")
    w = d / "model.safetensors"
    if damage == "zero-byte":
        w.write_bytes(b"")
    elif damage == "truncated":
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    elif damage == "foreign-config":
        (d / "config.json").write_text(json.dumps({"format": "keras", "task": "x"}))
    else:
        cfg = json.loads((d / "config.json").read_text())
        cfg["latent"] = cfg["latent"] + 1
        (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(TransferkitError) as info:
        load(d)
    assert "\n" not in str(info.value) and str(d) in str(info.value)


def _tiny_model_dir(path: Path) -> Path:
    """A tiny dense autoencoder model directory (the fixture format of tests/fixtures/model_v1)."""
    import shutil

    shutil.copytree(FIXTURE_V1, path)
    return path


FIXTURE_V1 = ROOT / "tests" / "fixtures" / "model_v1"


def test_model_directory_of_format_version_1_loads_and_newer_ones_are_refused(tmp_path):
    """Row: a model directory from an older transferkit version. The committed format-1 fixture loads and gives
    the outputs recorded when it was made; a future format is refused with an upgrade message."""
    from transferkit.core.modeldir import load

    m = load(FIXTURE_V1)
    expected = np.load(FIXTURE_V1.parent / "model_v1_expected.npy")
    x = torch.linspace(0, 1, 64).reshape(1, 1, 8, 8)
    with torch.no_grad():
        out = m.module(x)
    out = out[0] if isinstance(out, tuple) else out
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)
    d = _tiny_model_dir(tmp_path / "future")
    cfg = json.loads((d / "config.json").read_text())
    cfg["format_version"] = 99
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(TransferkitError, match="newer transferkit"):
        load(d)


# --------------------------------------------------------------------------- crafted files


def test_crafted_safetensors_pickles_and_yaml_are_refused_unexecuted(tmp_path):
    """Row: crafted safetensors (huge header, overlapping offsets), malicious pickle, YAML !!python/object."""
    from transferkit.core import config as C
    from transferkit.core.backbones import read_state_dict
    from transferkit.core.modeldir import load

    marker = tmp_path / "pwned"
    # huge header length
    d = _tiny_model_dir(tmp_path / "huge")
    (d / "model.safetensors").write_bytes(struct.pack("<Q", 10**15) + b"{}")
    with pytest.raises(TransferkitError, match="damaged"):
        load(d)
    # overlapping offsets: two tensors claiming the same bytes
    d = _tiny_model_dir(tmp_path / "overlap")
    header = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                         "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}).encode()
    (d / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 12)
    with pytest.raises(TransferkitError, match="damaged"):
        load(d)
    # a pickle that would run code
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"w": Evil()}, f, protocol=2)
    with pytest.raises(TransferkitError):
        read_state_dict(tmp_path / "evil.pth")
    # YAML that would build a Python object
    (tmp_path / "evil.yaml").write_text(f"epochs: !!python/object/apply:os.system ['touch {marker}']\n")
    from transferkit.tasks.classify import ClassifyConfig

    with pytest.raises(TransferkitError):
        C.load(ClassifyConfig, tmp_path / "evil.yaml")
    assert not marker.exists()


def test_archives_with_escaping_names_write_nothing_outside(tmp_path):
    """Row: zip with ``../``, absolute paths or symlinks. Omniglot zips are read in memory, never extracted:
    nothing is written anywhere, escaping names are only labels."""
    from PIL import Image

    from transferkit.core.datasets import load_omniglot

    import io

    buf = io.BytesIO()
    Image.fromarray(np.full((20, 20), 255, np.uint8)).save(buf, format="PNG")
    z = tmp_path / "a.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for name in ["../../evil/c1/x.png", "/abs/evil/c2/y.png", "ok/alpha/c3/z.png", "ok/alpha/c3/w.png"]:
            zf.writestr(name, buf.getvalue())
        info = zipfile.ZipInfo("ok/alpha/link/l.png")
        info.external_attr = (0o120777 << 16)  # a symlink entry
        zf.writestr(info, "/etc/passwd")
    before = set(tmp_path.parent.rglob("*"))
    try:
        data = load_omniglot(z, size=20)
    except TransferkitError as err:  # refusing the archive is fine too, in one line
        assert "\n" not in str(err)
        data = None
    assert set(tmp_path.parent.rglob("*")) == before
    assert not Path("/abs").exists() and not (tmp_path.parent.parent / "evil").exists()
    if data is not None:
        assert len(data.images) >= 2


# --------------------------------------------------------------------------- divergence


def test_nan_loss_skips_the_step_then_stops_keeping_the_last_good_checkpoint(tmp_path):
    """Row: NaN or Inf loss. One bad batch: its step is skipped (weights untouched), training goes on. Three in
    a row: the run stops with one line naming epoch and batch; the diverged model is not saved, last.ckpt is
    finite."""
    seen = {}

    def one_nan(module, loss, batch_idx):
        if module.current_epoch == 1 and batch_idx == 2:
            seen["before"] = _weights(module)
            return loss * float("nan")
        if module.current_epoch == 1 and batch_idx == 3 and "after" not in seen:
            seen["after"] = _weights(module)
        return loss

    trainer, _ = faults_tiny.train(tmp_path / "one", epochs=2, loss_hook=one_nan)
    assert trainer.current_epoch == 2 and _same(seen["before"], seen["after"])

    def nan_from_epoch_2(module, loss, batch_idx):
        return loss * float("inf") if module.current_epoch >= 1 and batch_idx >= 1 else loss

    with pytest.raises(TrainingDiverged) as info:
        faults_tiny.train(tmp_path / "nan", epochs=5, loss_hook=nan_from_epoch_2)
    msg = str(info.value)
    assert "\n" not in msg and "epoch 2, batch 4" in msg and "not saved" in msg, msg
    state = _ckpt(tmp_path / "nan/checkpoints/last.ckpt")
    assert state["epoch"] == 0 and all(torch.isfinite(v).all() for v in state["state_dict"].values())


def test_exploding_loss_stops_the_run_and_classify_saves_no_model(tmp_path, colours):
    """Row: diverging loss (finite but exploding). The engine warns, then stops after 3 batches over 1000x the
    first batch's loss; `classify fit --lr 1e6` exits non-zero with one line and writes no model."""
    from transferkit.cli.main import main

    def explode(module, loss, batch_idx):
        return loss * (1e6 if module.current_epoch >= 1 else 1.0)

    with pytest.raises(TrainingDiverged, match="exploded"):
        faults_tiny.train(tmp_path / "boom", epochs=3, loss_hook=explode)
    assert (tmp_path / "boom/checkpoints/best.ckpt").is_file()

    run = tmp_path / "cls"
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["classify", "fit", str(colours), "--out", str(run), "--strategy", "finetune", "--lr", "1e6",
                     "--epochs", "6", *TINY_FLAGS])
    text = err.getvalue()
    assert code == 2 and "error: Training diverged" in text, text
    assert not (run / "model").exists()


# --------------------------------------------------------------------------- disk


@pytest.mark.parametrize("where", ["/proc/transferkit-x", "file/run", "readonly/run"])
def test_output_folder_that_cannot_be_written_fails_before_any_work(tmp_path, colours, where, capsys):
    """Row: output folder not creatable or not writable: one `error:` line, exit 2, before the data are read."""
    from transferkit.cli.main import main

    if where.startswith("file"):
        (tmp_path / "file").write_text("in the way")
    if where.startswith("readonly"):
        if os.geteuid() == 0:
            pytest.skip("root can write into a read-only folder; /proc covers the case")
        (tmp_path / "readonly").mkdir(mode=0o555)
    out = where if where.startswith("/") else str(tmp_path / where)
    t0 = time.perf_counter()
    code = main(["classify", "fit", str(tmp_path / "no-such-data"), "--out", out, *TINY_FLAGS])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --out") and err.count("\n") == 1, err
    assert time.perf_counter() - t0 < 5  # before the data (missing here) or the backbone are touched


def test_disk_full_while_saving_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    """Row: disk full while saving (ENOSPC). The error surfaces in one line; the previous checkpoint survives."""
    import errno

    import lightning.pytorch as pl

    real = os.fsync

    class FillDisk(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                def full(fd):
                    raise OSError(errno.ENOSPC, "No space left on device")
                monkeypatch.setattr(os, "fsync", full)

    with pytest.raises(TransferkitError, match="No space left on device") as info:
        faults_tiny.train(tmp_path / "run", epochs=3, callbacks=[FillDisk()])
    monkeypatch.setattr(os, "fsync", real)
    assert "kept" in str(info.value)
    ck = tmp_path / "run/checkpoints"
    assert _ckpt(ck / "last.ckpt")["epoch"] == 0 and not list(ck.glob(".*.tmp"))


# --------------------------------------------------------------------------- workers, memory


@pytest.mark.parametrize("how", ["kill", "hang"])
def test_dataloader_worker_killed_or_hanging_gives_one_line(tmp_path, how, monkeypatch):
    """Row: a DataLoader worker killed or hanging: one clear line, never a hang."""
    monkeypatch.setenv("TRANSFERKIT_LOADER_TIMEOUT", "3")
    ds = faults_tiny.Slow(faults_tiny.data(), bad=40, how=how)
    t0 = time.time()
    with pytest.raises(TransferkitError, match="data-loading worker") as info:
        faults_tiny.train(tmp_path / "run", epochs=2, train_ds=ds, workers=1)
    assert "\n" not in str(info.value) and time.time() - t0 < 60
    assert ("killed" in str(info.value)) if how == "kill" else ("timed out" in str(info.value))
    assert "worker 0 on item 40" in str(info.value)  # the item the worker was loading when it died or hung


def test_out_of_memory_names_the_batch_size_and_the_flag(tmp_path):
    """Row: out of memory (simulated)."""
    with pytest.raises(TransferkitError) as info:
        faults_tiny.train(tmp_path / "run", epochs=1, step_error=torch.OutOfMemoryError("CUDA out of memory. Tried "
                                                                                        "to allocate 2.00 GiB"))
    msg = str(info.value)
    assert "batch size 16" in msg and "--batch-size" in msg and "\n" not in msg


# --------------------------------------------------------------------------- data and folders


def test_bad_class_layouts_are_named_with_counts(tmp_path, capsys):
    """Row: empty class folder, single class, severe imbalance, class missing from validation."""
    from transferkit.core.datasets import load_labelled

    d = make_class_folders(tmp_path / "d", n_per_class=3, size=16, classes=("red",))
    with pytest.raises(TransferkitError, match="single class"):
        load_labelled(d, 0.2, 0)
    (d / "green").mkdir()  # an empty class folder
    with pytest.raises(TransferkitError):
        load_labelled(d, 0.2, 0)
    tv = tmp_path / "tv"
    make_class_folders(tv / "train", n_per_class=4, size=16, classes=("red", "green"))
    make_class_folders(tv / "val", n_per_class=2, size=16, classes=("red",))
    try:
        split = load_labelled(tv, 0.2, 0)
    except TransferkitError as err:
        assert "green" in str(err)
    else:
        assert split.train.classes == ["green", "red"]
        captured = capsys.readouterr()
        assert "green" in captured.err or set(split.val.labels) == {split.train.classes.index("red")}


def test_a_second_process_into_the_same_run_folder_is_refused(tmp_path, capsys):
    """Row: two processes writing one run folder. While one trains, a second run into the folder (new or
    --resume) refuses in one line and writes nothing; the lock dies with its process (kill -9 included)."""
    from transferkit.cli.main import main

    run = tmp_path / "run"
    proc = _tiny_script(tmp_path, run, "--epochs", "400", "--sleep", "0.02")
    try:
        _wait_for(run / "checkpoints" / "last.ckpt", proc)
        with pytest.raises(TransferkitError, match=f"Another transferkit process \\(pid {proc.pid}\\) is training"):
            faults_tiny.train(run, epochs=400, resume=True)
        data = make_class_folders(tmp_path / "d", n_per_class=3, size=16, classes=("red", "green"))
        code = main(["classify", "fit", str(data), "--out", str(run), *TINY_FLAGS])
        err = capsys.readouterr().err
        assert code == 2 and "--resume" in err and err.count("\n") == 1, err
        assert not (run / "config.yaml").exists() and not (run / "split.json").exists()
    finally:
        proc.kill()
        proc.wait()
    trainer, _ = faults_tiny.train(run, epochs=int(_ckpt(run / "checkpoints" / "last.ckpt")["epoch"]) + 2, resume=True)
    assert trainer.current_epoch >= 2  # the dead process's lock is gone


def test_two_new_runs_started_in_the_same_instant_one_refuses(tmp_path, monkeypatch):
    """Row: two processes writing one run folder, started together. The race is forced: a second run claims
    the folder between the first's emptiness check and its claim; the first must then refuse."""
    from transferkit.core import engine

    run = tmp_path / "run"
    real = engine.check_writable

    def other_process_wins(path, what="--out"):
        monkeypatch.setattr(engine, "check_writable", real)
        engine.prepare_run_dir(run, resume=False)  # the other run passes every check and claims the folder
        real(path, what)

    monkeypatch.setattr(engine, "check_writable", other_process_wins)
    with pytest.raises(TransferkitError, match="already holds files"):
        engine.prepare_run_dir(run, resume=False)
    assert sorted(p.name for p in run.iterdir()) == [engine.LOCK_FILE]  # the winner's claim, nothing else


def test_ctrl_c_before_the_first_checkpoint_says_how_to_start_again(tmp_path, monkeypatch, capsys):
    """Row: SIGINT outside training (decoding, feature extraction): exit 130 and one line saying what the run
    folder holds and what to do, since a plain rerun would refuse the folder and --resume has nothing to resume."""
    from transferkit.cli.main import main
    from transferkit.tasks.classify import train as classify_train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(classify_train, "_fit_trained", interrupted)
    data = make_class_folders(tmp_path / "d", n_per_class=3, size=16, classes=("red", "green"))
    run = tmp_path / "run"
    code = main(["classify", "fit", str(data), "--out", str(run), "--strategy", "finetune", *TINY_FLAGS])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 130 and err[-1].startswith("interrupted (Ctrl-C) before the first checkpoint")
    assert str(run) in err[-1] and "remove it" in err[-1] and (run / "config.yaml").is_file()
