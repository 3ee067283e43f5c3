"""classify: every strategy end to end on tiny generated images with a tiny backbone, eval, report, config, errors."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import torch

from tests.conftest import make_class_folders
from transferkit.tasks.classify import ClassifyConfig, evaluate, fit

# precision pinned: these tests assert accuracy after a few steps on 36 images, which bf16 rounding can move
# (test_precision.py covers bf16 fits; the CLI tests below follow $TRANSFERKIT_PRECISION)
TINY = dict(backbone="test_efficientnet", weights="none", image_size=32, batch_size=4, seed=0, precision="32")
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # subprocesses beside pytest-xdist workers: no oversubscription


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_class_folders(tmp_path_factory.mktemp("cls") / "colours", n_per_class=10, size=36)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TRANSFERKIT_PROGRESS", "0")


def summary(run):
    return json.loads((run / "summary.json").read_text())


def metric_rows(run):
    with (run / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def initial_backbone(seed=0):
    """The backbone `fit` starts from: seeded exactly as fit seeds it."""
    import timm

    from transferkit.core import engine

    engine.seed_everything(seed)
    return timm.create_model("test_efficientnet", pretrained=False, num_classes=0)


@pytest.mark.parametrize("head", ["logistic", "svm", "softmax"])
def test_features_strategy(tmp_path, data, head):
    import transferkit

    extra = dict(epochs=6, lr=0.05) if head == "softmax" else {}
    run = fit(ClassifyConfig(strategy="features", head=head, **TINY, **extra), data, tmp_path / "run")
    s = summary(run)
    assert s["val_accuracy"] > 0.5  # chance is 1/3
    # the run folder is a model directory for predict, with the class names
    out = transferkit.predict([data / "red"], model=run, top_k=1)
    assert {r["top"][0]["label"] for r in out} <= {"red", "green", "blue"}
    assert np.mean([r["top"][0]["label"] == "red" for r in out]) > 0.5
    # the head's probabilities agree with what validation measured
    res = evaluate(run, data)
    assert res["n"] == 30 and res["accuracy"] > 0.5
    if head == "logistic":
        assert s["feature_cache"] == {"hits": 0, "misses": 30 + 30}  # 30 images and their mirror images
        again = fit(ClassifyConfig(strategy="features", head=head, **TINY), data, tmp_path / "run2")
        assert summary(again)["feature_cache"] == {"hits": 60, "misses": 0}
        assert summary(again)["val_accuracy"] == s["val_accuracy"]


def test_freeze_strategy_keeps_frozen_weights(tmp_path, data):
    from transferkit.core import freezing
    from transferkit.core.modeldir import load

    cfg = ClassifyConfig(strategy="freeze", freeze_to=3, head_layers=(16,), epochs=6, lr=0.01, **TINY)
    run = fit(cfg, data, tmp_path / "run")
    assert evaluate(run, data)["accuracy"] > 0.5  # chance is 1/3
    start = initial_backbone().state_dict()
    trained = load(run).module.backbone.state_dict()
    stages = freezing.backbone_stages(initial_backbone())
    frozen = {n for s in stages[:3] for n in s.param_names}
    for name in frozen:
        assert torch.equal(start[name], trained[name]), name
    # frozen BatchNorm stayed in eval mode: its running statistics never moved
    assert torch.equal(start["bn1.running_mean"], trained["bn1.running_mean"])
    top = [n for n in stages[-1].param_names if n.endswith("weight")][0]
    assert not torch.equal(start[top], trained[top])  # the unfrozen top did train
    assert load(run).config["head_layers"] == [16]


def test_finetune_per_layer_learning_rates(tmp_path, data):
    cfg = ClassifyConfig(strategy="finetune", lr_range="1e-4:1e-2", schedule="constant", epochs=4, **TINY)
    run = fit(cfg, data, tmp_path / "run")
    assert evaluate(run, data)["accuracy"] > 0.5
    rows = [r for r in metric_rows(run) if r.get("lr_head")]
    assert float(rows[0]["lr_head"]) == pytest.approx(1e-2)
    assert float(rows[0]["lr_bottom"]) == pytest.approx(1e-4)
    # the optimiser's groups are the geometric spread asked for
    from transferkit.core import freezing
    from transferkit.tasks.classify.model import Classifier
    from transferkit.tasks.classify.module import ClassifierModule

    net = Classifier(initial_backbone(), 3)
    module = ClassifierModule(net, cfg, freezing.backbone_stages(net.backbone))
    lrs = [g["lr"] for g in module.param_groups() if "no decay" not in g["name"]]
    assert lrs == pytest.approx(np.geomspace(1e-4, 1e-2, len(lrs)).tolist())
    decayed = ClassifierModule(net, ClassifyConfig(strategy="finetune", lr=1e-3, layer_decay=0.5, **TINY),
                               freezing.backbone_stages(net.backbone))
    lrs = [g["lr"] for g in decayed.param_groups() if "no decay" not in g["name"]]
    assert lrs == pytest.approx([1e-3 * 0.5 ** (len(lrs) - 1 - i) for i in range(len(lrs))])


def test_gradual_unfreezes_after_head_epochs(tmp_path, data):
    cfg = ClassifyConfig(strategy="gradual", head_epochs=2, epochs=5, lr=0.01, **TINY)
    run = fit(cfg, data, tmp_path / "run")
    assert evaluate(run, data)["accuracy"] > 0.5
    frozen = {int(float(r["epoch"])): float(r["frozen_stages"]) for r in metric_rows(run) if r.get("frozen_stages")}
    n = frozen[0]
    assert n >= 5 and [frozen[e] for e in range(5)] == [n, n, 0, 0, 0]
    # the learning rate restarts at unfreezing (a new cycle), lower in the bottom stage than in the head
    lr = [float(r["lr_head"]) for r in metric_rows(run) if r.get("lr_head")]
    assert max(lr[len(lr) // 2:]) > 5 * min(lr[: len(lr) // 2])


def test_report_and_config_round_trip(tmp_path, data, cli, capsys):
    run = tmp_path / "run"
    r = cli("classify", "fit", data, "--out", run, "--strategy", "finetune", "--epochs", "2", "--backbone",
            "test_efficientnet", "--weights", "none", "--image-size", "32", "--batch-size", "8", "--rotate", "10",
            "--schedule", "onecycle", env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    html = (run / "report.html").read_text()
    names = re.findall(r"data-file='([^']+)'", html)
    for expected in ("loss.png", "accuracy.png", "lr.png", "confusion.png", "confused.png", "augmentation.png"):
        assert expected in names
    assert all((run / n).is_file() for n in names)
    assert "base64," in html and "Timings" in html and "rotate" in html
    # config.yaml reproduces the run's configuration
    from transferkit.core import config as C

    saved = C.load(ClassifyConfig, run / "config.yaml")
    assert saved["rotate"] == 10.0 and saved["schedule"] == "onecycle" and saved["epochs"] == 2
    from transferkit.cli.main import main

    assert main(["classify", "fit", str(data), "--out", str(tmp_path / "run2"), "--config", str(run / "config.yaml")]) == 0
    assert (tmp_path / "run2" / "config.yaml").read_text() == (run / "config.yaml").read_text()
    assert summary(tmp_path / "run2")["val_accuracy"] == summary(run)["val_accuracy"]  # seeded: same result


def test_eval_json_and_predict_cli(tmp_path, data, cli, capsys):
    from transferkit.cli.main import main

    run = fit(ClassifyConfig(**TINY), data, tmp_path / "run")
    r = cli("classify", "eval", run, data, "--json", check=True, env=ONE_THREAD)
    res = json.loads(r.stdout)
    assert set(res) >= {"accuracy", "per_class", "n"}
    assert res["n"] == 30 and 0.5 < res["accuracy"] <= 1.0
    assert set(res["per_class"]) == {"blue", "green", "red"}
    assert set(res["per_class"]["red"]) == {"precision", "recall", "f1", "support"}
    assert sum(map(sum, res["confusion_matrix"])) == 30
    capsys.readouterr()
    assert main(["classify", "eval", str(run), str(data)]) == 0
    text = capsys.readouterr().out
    assert "accuracy" in text and "confusion matrix" in text and "red" in text
    assert main(["predict", str(data / "blue"), "--model", str(run), "--json", "--top-k", "1"]) == 0
    labels = [json.loads(line)["top"][0]["label"] for line in capsys.readouterr().out.splitlines()]
    assert len(labels) == 10 and labels.count("blue") > 5
    # eval on folders with an unknown class name is a clear error
    other = make_class_folders(tmp_path / "other", n_per_class=2, size=20, classes=("red", "grey"))
    assert main(["classify", "eval", str(run), str(other)]) == 2
    assert "not known classes" in capsys.readouterr().err


def test_resume_after_kill_finishes_the_same_epochs(tmp_path, data):
    import os
    import signal
    import subprocess

    from tests.conftest import kill_at_first_checkpoint, transferkit_cmd

    run = tmp_path / "run"
    epochs = 8
    args = ["classify", "fit", str(data), "--out", str(run), "--strategy", "finetune",
            "--epochs", str(epochs), "--backbone", "test_efficientnet", "--weights", "none", "--image-size", "48",
            "--batch-size", "4"]
    env = {**os.environ, "TRANSFERKIT_CACHE": str(tmp_path / "cache"), **ONE_THREAD}
    proc = kill_at_first_checkpoint(args, env, run, timeout=240)
    last = run / "checkpoints" / "last.ckpt"
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert not (run / "model").exists()  # it really was interrupted
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["epoch"] < epochs - 1
    # a second run into the same folder without --resume is refused, nothing overwritten
    r = subprocess.run([*transferkit_cmd(), *args], env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "--resume" in r.stderr
    r = subprocess.run([*transferkit_cmd(), *args, "--resume"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    epochs_logged = {int(float(row["epoch"])) for row in metric_rows(run) if row.get("val_acc")}
    assert epochs_logged == set(range(epochs))
    assert (run / "model" / "model.safetensors").is_file()


@pytest.mark.parametrize("layout, message", [
    ("empty", "No images found"),
    ("single", "single class"),
    ("one_image", "at least 2 images"),
    ("missing", "No such file or folder"),
])
def test_bad_data_is_refused_before_training(tmp_path, cli, layout, message):
    root = tmp_path / "d"
    if layout == "empty":
        (root / "a").mkdir(parents=True)
        (root / "b").mkdir(parents=True)
    elif layout == "single":
        make_class_folders(root, n_per_class=3, size=16, classes=("red",))
    elif layout == "one_image":
        make_class_folders(root, n_per_class=3, size=16, classes=("red", "green"))
        for p in list((root / "green").iterdir())[1:]:
            p.unlink()
    r = cli("classify", "fit", root, "--out", tmp_path / "run")
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()


def test_imbalance_is_reported_and_csv_input(tmp_path, capsys):
    from transferkit.cli.main import main

    root = make_class_folders(tmp_path / "d", n_per_class=12, size=24, classes=("red", "green"))
    for p in sorted((root / "green").iterdir())[4:]:
        p.unlink()
    rows = ["path,label"] + [f"{p.relative_to(root)},{p.parent.name}" for p in sorted(root.rglob("*.png"))]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    code = main(["classify", "fit", str(root / "labels.csv"), "--out", str(tmp_path / "run"), "--backbone",
                 "test_efficientnet", "--weights", "none", "--image-size", "32", "--class-weights"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "train: green 3, red 10" in err and "imbalanced" in err


@pytest.mark.parametrize("flags, message", [
    (["--lr-range", "1e-3"], "lo:hi"),
    (["--layer-decay", "1.5"], "layer-decay"),
    (["--strategy", "gradual", "--epochs", "2", "--head-epochs", "2"], "head-epochs"),
    (["--jitter", "0.1,0.1,0.1,0.9"], "hue"),
])
def test_bad_options(tmp_path, cli, flags, message):
    data = make_class_folders(tmp_path / "d", n_per_class=3, size=16, classes=("red", "green"))
    r = cli("classify", "fit", data, "--out", tmp_path / "run", *flags)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()


def test_bad_choice_and_freeze_depth(tmp_path, capsys):
    from transferkit.cli.main import main

    data = make_class_folders(tmp_path / "d", n_per_class=3, size=16, classes=("red", "green"))
    with pytest.raises(SystemExit):
        main(["classify", "fit", str(data), "--out", str(tmp_path / "run"), "--strategy", "nope"])
    assert "invalid choice" in capsys.readouterr().err
    code = main(["classify", "fit", str(data), "--out", str(tmp_path / "run"), "--strategy", "freeze", "--freeze-to", "99",
                 "--backbone", "test_efficientnet", "--weights", "none"])
    assert code == 2 and "more than the backbone's" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_task_packages_keep_their_functions_after_submodules_load():
    # A submodule named like a package-level function replaces it once imported
    # (``evaluate`` then fails on its second call): package names and module names must differ.
    import importlib
    import inspect
    import pkgutil

    import transferkit.tasks

    tasks = [m.name for m in pkgutil.iter_modules(transferkit.tasks.__path__) if m.ispkg]
    assert "classify" in tasks and "autoencoder" in tasks
    for task in tasks:
        pkg = importlib.import_module(f"transferkit.tasks.{task}")
        public = [n for n, v in vars(pkg).items() if inspect.isfunction(v) and not n.startswith("_")]
        for info in pkgutil.iter_modules(pkg.__path__):
            importlib.import_module(f"{pkg.__name__}.{info.name}")
        for name in public:
            assert inspect.isfunction(getattr(pkg, name)), f"transferkit.tasks.{task}.{name} became a module"
