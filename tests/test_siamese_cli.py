"""The `transferkit siamese` commands: fit -> eval -> calibrate -> verify through the installed CLI; the runs
format, resume, the Omniglot zips (when ../shared/data is present) and one clear error line for bad input
through the same entry point in-process (``cli.main.main``: a subprocess per error case would cost seconds each)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_siamese import face, identity_params, make_faces

ENV = {"OMP_NUM_THREADS": "1"}
TINY = ["--image-size", "32", "--width", "0.5", "--embedding", "32", "--epochs", "3", "--steps-per-epoch", "10",
        "--batch-size", "32", "--val-classes", "0.25", "--warmup-steps", "5", "--lr", "0.003", "--augment-p", "0",
        "--device", "cpu", "--precision", "32"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def main(*args) -> tuple[int, str, str]:
    """Run ``transferkit ARGS`` in this process: (exit status, stdout, stderr)."""
    import contextlib
    import io

    from transferkit.cli.main import main as cli_main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def people(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("people")
    make_faces(root / "train", 12, 6, seed=1)
    make_faces(root / "heldout", 8, 5, seed=2, prefix="visitor")
    return root


def test_fit_eval_calibrate_verify(cli, people, tmp_path):
    run = tmp_path / "run"
    r = cli("siamese", "fit", people / "train", "--out", run, *TINY, env=ENV)
    assert r.returncode == 0, r.stderr
    assert (run / "model" / "config.json").is_file() and (run / "report.html").is_file()
    assert "held-out 3-way one-shot accuracy" in r.stderr

    r = cli("siamese", "eval", run, people / "heldout", "--way", "5", "--episodes", "40", "--json", env=ENV)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert {"accuracy", "ci95", "episodes"} <= set(res) and res["episodes"] == 40 and 0 <= res["accuracy"] <= 1
    assert res["center"] is True  # saved with the model by fit (--center is the default)
    code, out, _ = main("siamese", "eval", run, people / "heldout", "--way", "5", "--episodes", "40", "--json",
                        "--no-center")
    assert code == 0 and json.loads(out)["center"] is False and json.loads(out)["episodes"] == 40
    assert res["align"] is True and res["local"] == 0.3  # fit's matching, saved with the model
    code, out, _ = main("siamese", "eval", run, people / "heldout", "--way", "5", "--episodes", "40", "--json",
                        "--no-align-views", "--local-match", "0")
    plain = json.loads(out)
    assert code == 0 and plain["align"] is False and plain["local"] == 0.0 and plain["center"] is True
    code, out, _ = main("siamese", "eval", run, people / "heldout", "--way", "5", "--episodes", "40")
    assert code == 0 and "5-way 1-shot accuracy" in out and "95% CI" in out

    code, out, err = main("siamese", "calibrate", run, people / "heldout", "--far", "0.05", "--json")
    assert code == 0, err
    rec = json.loads(out)
    assert rec["method"] == "far" and rec["far"] <= 0.05
    assert json.loads((run / "model" / "config.json").read_text())["verification"]["threshold"] == rec["threshold"]

    rng = np.random.default_rng(5)
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    alice = identity_params(rng)
    face(alice, rng).save(gallery / "alice.png")  # flat gallery: the file name is the identity
    face(identity_params(rng), rng).save(gallery / "bob.png")
    face(alice, rng).save(tmp_path / "probe.png")
    r = cli("siamese", "verify", run, "--gallery", gallery, tmp_path / "probe.png", env=ENV)
    assert r.returncode == 0, r.stderr
    path, identity, distance, decision = r.stdout.strip().split("\t")
    assert Path(path).name == "probe.png" and identity in ("alice", "bob") and float(distance) >= 0
    assert decision in ("match", "no match")
    code, text, _ = main("siamese", "verify", run, "--gallery", gallery, tmp_path / "probe.png", "--threshold", "1e9", "--json")
    out = json.loads(text)
    assert out["match"] is True and out["threshold"] == 1e9 and set(out) == {"path", "identity", "distance", "match", "threshold"}


def test_runs_format_and_resume(people, tmp_path):
    run = tmp_path / "run"
    args = [a if a != "3" else "1" for a in TINY]  # one epoch
    assert main("siamese", "fit", people / "train", "--out", run, *args)[0] == 0
    code, _, err = main("siamese", "fit", people / "train", "--out", run, *args)
    assert code == 2 and "--resume" in err  # a run is never overwritten
    code, _, err = main("siamese", "fit", people / "train", "--out", run, "--resume", "--epochs", "2")
    assert code == 0, err
    assert json.loads((run / "summary.json").read_text())["steps"] == 20  # 10 steps, resumed, 10 more

    code, _, err = main("siamese", "make-runs", people / "heldout", tmp_path / "runs", "--runs", "3", "--way", "5")
    assert code == 0, err
    assert (tmp_path / "runs" / "run03" / "class_labels.txt").is_file()
    code, out, err = main("siamese", "eval", run, "--runs", tmp_path / "runs")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["run01", "run02", "run03", "overall"]
    code, out, _ = main("siamese", "eval", run, "--runs", tmp_path / "runs", "--json")
    res = json.loads(out)
    assert res["episodes"] == 3 and len(res["runs"]) == 3 and 0 <= res["accuracy"] <= 1 and "ci95" in res
    assert res["center"] is True
    code, out, _ = main("siamese", "eval", run, "--runs", tmp_path / "runs", "--json", "--no-center")
    assert code == 0 and json.loads(out)["center"] is False
    code, out, _ = main("siamese", "eval", run, "--runs", tmp_path / "runs", "--json", "--local-match", "0.5",
                        "--no-align-views")
    assert code == 0 and json.loads(out)["local"] == 0.5 and json.loads(out)["align"] is False
    code, _, err = main("siamese", "eval", run, "--runs", tmp_path / "runs", "--local-match", "-1")
    assert code == 2 and "--local-match must be >= 0" in err


def test_bad_input_gets_one_clear_line(cli, people, tmp_path):
    one = tmp_path / "one"
    (one / "only").mkdir(parents=True)
    for i in range(3):
        Image.new("L", (20, 20), 100 + i).save(one / "only" / f"{i}.png")
    cases = [
        (("siamese", "fit", one, "--out", tmp_path / "r1"), "at least two classes"),
        (("siamese", "fit", tmp_path / "missing", "--out", tmp_path / "r2"), "No such file or folder"),
        (("siamese", "fit", people / "train", "--out", tmp_path / "r3", "--per-class", "1"), "--per-class"),
        (("siamese", "fit", people / "train", "--out", tmp_path / "r4", "--freeze-to", "2"), "pretrained encoders"),
        (("siamese", "eval", tmp_path, people / "heldout"), "not a transferkit model"),
        (("siamese", "eval", tmp_path, "--runs", tmp_path), "not a transferkit model"),
    ]
    for args, message in cases:
        code, _, err = main(*args)
        assert code == 2, (args, err)
        assert err.startswith("error:") and message in err, (args, err)
    assert not (tmp_path / "r1").exists()  # nothing written before the data was checked
    r = cli(*cases[0][0], env=ENV)  # and the installed command says the same, without a traceback
    assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr


def test_crop_ink_is_saved_with_the_model_and_used_by_eval(people, tmp_path):
    from transferkit.core.modeldir import load
    from transferkit.tasks.siamese.oneshot import image_format

    run = tmp_path / "run"
    args = [a if a != "3" else "1" for a in TINY] + ["--steps-per-epoch", "2", "--crop-ink"]
    code, _, err = main("siamese", "fit", people / "train", "--out", run, *args)
    assert code == 0 and "cropped to the ink" in err, err
    assert image_format(load(run)) == (32, True, True)
    code, out, err = main("siamese", "eval", run, people / "heldout", "--way", "5", "--episodes", "5", "--json")
    assert code == 0 and json.loads(out)["episodes"] == 5, err
    # colour photos have no ink to crop: said once, and the images are read whole
    colour = tmp_path / "colour"
    for k, rgb in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        (colour / f"c{k}").mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (32, 32), tuple(min(255, v + 8 * i) for v in rgb)).save(colour / f"c{k}" / f"{i}.png")
    code, _, err = main("siamese", "fit", colour, "--out", tmp_path / "run_colour", *args, "--val-classes", "0")
    assert code == 0 and "--crop-ink applies to grey drawings" in err, err
    assert image_format(load(tmp_path / "run_colour")) == (32, False, False)


def test_errors_of_a_trained_model(people, tmp_path):
    run = tmp_path / "run"
    args = [a if a != "3" else "1" for a in TINY] + ["--val-classes", "0"]  # no held-out classes: no threshold yet
    assert main("siamese", "fit", people / "train", "--out", run, *args)[0] == 0
    cases = [
        (("siamese", "verify", run, "--gallery", people / "heldout", people / "heldout" / "visitor00"), "calibrate"),
        (("siamese", "eval", run), "Give DATA"),
        (("siamese", "eval", run, people / "heldout", "--way", "9"), "9-way episodes need 9"),
        (("siamese", "eval", run, "--runs", people), "no runNN folders"),
        (("siamese", "calibrate", run, people / "heldout", "--far", "2"), "--far"),
    ]
    for args, message in cases:
        code, _, err = main(*args)
        assert code == 2 and message in err, (args, err)


@pytest.mark.shared_data
def test_omniglot_zips_unseen_alphabets(shared_data, tmp_path):
    """A few steps on small1.zip; episodes from small2.zip leave out Greek and Latin (in both zips)."""
    om = shared_data / "omniglot"
    run = tmp_path / "run"
    code, _, err = main("siamese", "fit", om / "images_background_small1.zip", "--out", run, "--epochs", "1",
                        "--steps-per-epoch", "3", "--batch-size", "32", "--width", "0.25", "--embedding", "16",
                        "--image-size", "28", "--val-way", "5", "--device", "cpu", "--precision", "32")
    assert code == 0, err
    assert "x4 rotations" in err and "cropped to the ink" in err  # characters: cropped by default
    cfg = json.loads((run / "model" / "config.json").read_text())
    assert cfg["siamese"]["ink"] is True
    assert cfg["training"]["alphabets"] == ["Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"]
    code, out, err = main("siamese", "eval", run, om / "images_background_small2.zip", "--episodes", "20", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["excluded_alphabets"] == ["Greek", "Latin"] and res["excluded_classes"] == 50
    assert res["alphabets"] == ["Japanese_(katakana)", "Sanskrit", "Tagalog"] and res["classes"] == 106
