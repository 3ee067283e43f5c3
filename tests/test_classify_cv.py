"""Honest small-data numbers: Wilson intervals, repeated stratified cross-validation of the features strategy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import make_class_folders
from transferkit.errors import TransferkitError
from transferkit.tasks.classify import ClassifyConfig, fit
from transferkit.tasks.classify.evaluation import metrics_from_probs, wilson_interval
from transferkit.tasks.classify.features import cross_validate

TINY = dict(backbone="test_efficientnet", weights="none", image_size=32, batch_size=4, seed=0, precision="32")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TRANSFERKIT_PROGRESS", "0")


def test_wilson_interval():
    lo, hi = wilson_interval(49, 49)
    assert hi == 1.0 and 0.92 < lo < 0.935  # 100% on 49 images: the true rate may well be 93%
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-3) and hi == pytest.approx(0.7634, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    m = metrics_from_probs(np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), [0, 1, 1], ["a", "b"])
    assert m["ci95"] == pytest.approx(list(wilson_interval(2, 3)))


def test_cross_validation_tells_signal_from_noise():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 20)
    signal = rng.normal(size=(60, 8)) + 3 * np.eye(3)[y] @ rng.normal(size=(3, 8))
    noise = rng.normal(size=(60, 8))
    good = cross_validate(signal, y, signal + 0.01, 3, folds=5, repeats=2, head="logistic", c=1.0, balanced=False, seed=0)
    bad = cross_validate(noise, y, None, 3, folds=5, repeats=2, head="logistic", c=1.0, balanced=False, seed=0)
    assert good["mean"] > 0.9 and bad["mean"] < 0.6
    assert len(good["fold_accuracies"]) == 10 and good["n"] == 60 and good["std"] >= 0
    # folds are lowered to the smallest class's size; a class of one image cannot be cross-validated
    y_small = np.array([0] * 57 + [1] * 3)
    assert cross_validate(signal, y_small, None, 2, 5, 1, "svm", 1.0, False, 0)["folds"] == 3
    with pytest.raises(TransferkitError, match="two images of every class"):
        cross_validate(signal, np.array([0] * 59 + [1]), None, 2, 5, 1, "logistic", 1.0, False, 0)


def test_fit_reports_interval_and_cross_validation(tmp_path, capsys):
    data = make_class_folders(tmp_path / "colours", n_per_class=10, size=36)
    run = fit(ClassifyConfig(strategy="features", cv=3, cv_repeats=2, **TINY), data, tmp_path / "run")
    s = json.loads((run / "summary.json").read_text())
    lo, hi = s["val_ci95"]
    assert lo <= s["val_accuracy"] <= hi
    cv = s["cv"]
    assert cv["folds"] == 3 and cv["repeats"] == 2 and cv["n"] == 30 and len(cv["fold_accuracies"]) == 6
    assert cv["mean"] > 0.5  # chance is 1/3
    html = (run / "report.html").read_text()
    assert "Cross-validated accuracy" in html and "Wilson interval" in html and "cannot be told apart" in html
    assert "cross-validation x2 on all 30 images" in capsys.readouterr().err
    cfg = json.loads((run / "model" / "config.json").read_text())
    assert cfg["training"]["cv_accuracy"]["n"] == 30
    # --cv 0 turns it off
    off = fit(ClassifyConfig(strategy="features", cv=0, **TINY), data, tmp_path / "off")
    assert json.loads((off / "summary.json").read_text())["cv"] is None


def test_cv_option_errors():
    with pytest.raises(TransferkitError, match="--cv must be"):
        ClassifyConfig(cv=1).validate()
    with pytest.raises(TransferkitError, match="--cv-repeats"):
        ClassifyConfig(cv_repeats=0).validate()
