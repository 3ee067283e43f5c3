"""The installed `transferkit` command: predict, features, models, export, and its error behaviour."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import transferkit

OFFLINE = {"HF_HUB_OFFLINE": "1"}


def _errors_are_one_clear_line(proc):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_help_is_fast(cli):
    """`--help` imports nothing heavy (what makes it fast on any host), and its CPU time (not wall time, which a
    loaded CI machine stretches several times) stays small."""
    import resource

    code = ("import sys\nfrom transferkit.cli.main import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'numpy', 'timm', 'lightning', 'PIL', 'cv2', 'onnxruntime', 'sklearn', "
            "'matplotlib') if m in sys.modules]\nprint('HEAVY', heavy, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in proc.stderr, proc.stderr[-500:]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    _timed(cli, "--help")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu < 1.5, f"`transferkit --help` used {cpu:.2f} s of CPU"


def _timed(cli, *args):
    t = time.perf_counter()
    proc = cli(*args, check=True)
    assert "predict" in proc.stdout
    return time.perf_counter() - t


@pytest.mark.slow
def test_predict_samples_labels_cat_and_coffee(cli):
    proc = cli("predict", "--samples", "--top-k", "3", "--json", env=OFFLINE, check=True)
    rows = {r["path"]: r for r in map(json.loads, proc.stdout.splitlines())}
    cat = [t["label"] for t in rows["skimage:chelsea"]["top"]]
    assert any("cat" in label for label in cat), cat
    assert rows["skimage:coffee"]["top"][0]["label"] == "espresso"
    top = rows["skimage:coffee"]["top"]
    assert set(top[0]) == {"label", "prob"} and top[0]["prob"] >= top[1]["prob"] >= top[2]["prob"]


@pytest.mark.slow
def test_python_api_predict_and_engines_agree():
    from transferkit.core.images import sample_images

    model = transferkit.load("efficientnet_lite0")
    items = sample_images()[:2]
    by_engine = {}
    for engine in ("onnx", "torch", "eager"):
        by_engine[engine] = transferkit.predict(None, model=model, samples=True, top_k=1, engine=engine)
    labels = {e: [r["top"][0]["label"] for r in rows] for e, rows in by_engine.items()}
    assert labels["onnx"] == labels["torch"] == labels["eager"], labels
    assert len(items) == 2


@pytest.fixture
def photo_folder(tmp_path):
    """A few real photos (scikit-image) plus every awkward file a user's folder may hold."""
    from skimage import data

    d = tmp_path / "my photos"
    (d / "sub").mkdir(parents=True)
    Image.fromarray(data.chelsea()).save(d / "cat one.jpg")
    Image.fromarray(data.coffee()).convert("P", palette=Image.ADAPTIVE).save(d / "sub" / "coffee.gif")
    Image.fromarray(data.astronaut()).save(d / "astronaut.jpeg")
    rgba = Image.fromarray(data.rocket()).convert("RGBA")
    rgba.save(d / "rocket_alpha.png")
    Image.fromarray(np.asarray(Image.fromarray(data.camera())).astype(np.uint16) * 257).save(d / "camera16.png")
    raw = (d / "cat one.jpg").read_bytes()
    (d / "broken.jpg").write_bytes(raw[: len(raw) // 3])
    (d / "zero.jpg").write_bytes(b"")
    return d


@pytest.mark.slow
def test_features_skip_bad_files_and_write_npz(cli, photo_folder, tmp_path):
    out = tmp_path / "f.npz"
    proc = cli("features", photo_folder, "--out", out, env=OFFLINE)
    assert proc.returncode == 0, proc.stderr
    assert "broken.jpg" in proc.stderr and "zero.jpg" in proc.stderr and "skipped 2" in proc.stderr
    with np.load(out, allow_pickle=False) as z:
        feats, paths = z["features"], [str(p) for p in z["paths"]]
        assert str(z["model"]) == "efficientnet_lite0" and str(z["layer"]) == "pre_logits"
        assert json.loads(str(z["preprocessing"]))["input_size"] == [3, 224, 224]
    assert feats.shape == (5, 1280) and feats.dtype == np.float32 and np.isfinite(feats).all()
    assert any(p.endswith("coffee.gif") for p in paths) and any("cat one.jpg" in p for p in paths)
    # same features as the Python API, in the same order
    fs = transferkit.features([photo_folder], layer="pre_logits")
    assert fs.paths == paths
    np.testing.assert_allclose(fs.features, feats, rtol=1e-4, atol=1e-4)

    strict = cli("features", photo_folder, "--out", tmp_path / "g.npz", "--strict", env=OFFLINE)
    assert "broken.jpg" in _errors_are_one_clear_line(strict)
    assert not (tmp_path / "g.npz").exists()


@pytest.mark.slow
def test_predict_table_and_model_dir_round_trip(cli, photo_folder, tmp_path):
    model = transferkit.load("efficientnet_lite0")
    model.save(tmp_path / "saved")
    proc = cli("predict", photo_folder / "cat one.jpg", "--model", tmp_path / "saved", "--top-k", "2", env=OFFLINE, check=True)
    lines = proc.stdout.splitlines()
    assert lines[0].endswith("cat one.jpg") and lines[1].lstrip().startswith("1.") and len(lines) == 3
    exp = cli("export", tmp_path / "saved", env=OFFLINE, check=True)
    assert (tmp_path / "saved" / "model.onnx").is_file() and "max abs difference" in exp.stdout


def test_bad_input_gives_one_line_and_status_2(cli, tmp_path):
    assert "No such file" in _errors_are_one_clear_line(cli("predict", tmp_path / "nope.jpg"))
    assert "Unknown model" in _errors_are_one_clear_line(cli("predict", "--samples", "--model", "not_a_model_x"))
    assert "top-k" in _errors_are_one_clear_line(cli("predict", "--samples", "--top-k", "0"))
    assert "Give image files" in _errors_are_one_clear_line(cli("predict"))
    (tmp_path / "empty").mkdir()
    assert "No images found" in _errors_are_one_clear_line(cli("features", tmp_path / "empty", "--out", "x.npz"))
    assert "not a transferkit model directory" in _errors_are_one_clear_line(cli("export", tmp_path / "empty"))
    no_weights = cli("predict", "--samples", "--model", "resnet18", env=OFFLINE)
    msg = _errors_are_one_clear_line(no_weights)
    assert "resnet18" in msg and "looked in" in msg


def test_models_lists_offline_ready(cli):
    proc = cli("models", check=True)
    assert "efficientnet_lite0" in proc.stdout and "timm" in proc.stdout


@pytest.mark.slow
def test_hymenoptera_features_with_broken_files_added(cli, shared_data, tmp_path):
    """The issue's "Done when": 245 rows from the real folder (a palette .gif, a .jpeg, a name with a space),
    and a copy with a truncated JPEG and a zero-byte file added still succeeds, naming both skipped files."""
    import shutil

    src = shared_data / "hymenoptera" / "train"
    copy = tmp_path / "hym"
    shutil.copytree(src, copy)
    raw = (copy / "ants" / "0013035.jpg").read_bytes()
    (copy / "ants" / "truncated.jpg").write_bytes(raw[: len(raw) // 2])
    (copy / "bees" / "zero.jpg").write_bytes(b"")
    proc = cli("features", copy, "--out", tmp_path / "f.npz", env=OFFLINE)
    assert proc.returncode == 0, proc.stderr
    assert "truncated.jpg" in proc.stderr and "zero.jpg" in proc.stderr
    with np.load(tmp_path / "f.npz", allow_pickle=False) as z:
        paths = [str(p) for p in z["paths"]]
        assert z["features"].shape == (245, 1280)
    assert any(p.endswith(".gif") for p in paths)
    assert any(p.endswith(".jpeg") for p in paths)
    assert any(" " in p.rsplit("/", 1)[-1] for p in paths)


def test_task_packages_are_reachable_from_the_top_level():
    import transferkit

    import pkgutil

    import transferkit.tasks

    tasks = [m.name for m in pkgutil.iter_modules(transferkit.tasks.__path__) if m.ispkg]
    assert sorted(transferkit._TASKS) == sorted(tasks)  # every task package is reachable, and nothing else
    for task in tasks:
        assert getattr(transferkit, task).__name__ == f"transferkit.tasks.{task}"
    assert callable(transferkit.classify.fit) and callable(transferkit.classify.evaluate)
    with pytest.raises(AttributeError):
        transferkit.no_such_task
