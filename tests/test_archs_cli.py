"""`transferkit arch list | summary | compare` through the installed command, and the data split of compare."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # tiny networks in a subprocess: one thread is faster on a busy CPU


def test_list_names_families_and_options(cli):
    p = cli("arch", "list", check=True)
    for name in ("resnet18", "plain34", "resnet56", "inception_small_naive", "vgg16", "lenet5"):
        assert name in p.stdout
    assert "options: stem, width" in p.stdout


@pytest.mark.parametrize("command", ["list", "summary", "compare"])
def test_help_of_every_command(command, capsys):
    from transferkit.cli.main import main

    with pytest.raises(SystemExit) as stop:
        main(["arch", command, "--help"])
    assert stop.value.code == 0 and "usage: transferkit arch " + command in capsys.readouterr().out


def test_list_json(capsys):
    from transferkit.cli.main import main

    assert main(["arch", "list", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    lenet = next(r for r in rows if r["name"] == "lenet5")
    assert lenet["family"] == "lenet" and lenet["default_input"] == [1, 28, 28]


def test_summary_table_of_lenet5(cli):
    out = cli("arch", "summary", "lenet5", check=True).stdout
    assert "c1 (Conv2d)" in out and "(6, 28, 28)" in out and "(16, 10, 10)" in out
    assert "Total params:         61,706" in out
    assert "Total MACs:           416,520" in out  # 117,600 + 240,000 + 48,000 + 10,080 + 840


def test_summary_json_totals_for_project_and_timm_networks(cli, capsys):
    from transferkit.cli.main import main

    ours = json.loads(cli("arch", "summary", "resnet18", "--input", "3,224,224", "--json", check=True).stdout)
    assert main(["arch", "summary", "timm/resnet18", "--input", "3,224,224", "--json"]) == 0
    theirs = json.loads(capsys.readouterr().out)
    assert main(["arch", "summary", "resnet18", "--timm", "--depth", "1", "--json"]) == 0
    also_theirs = json.loads(capsys.readouterr().out)
    assert ours["source"] == "transferkit" and theirs["source"] == also_theirs["source"] == "timm"
    for s in (ours, theirs, also_theirs):
        assert s["total_params"] == 11_689_512 == sum(r["params"] for r in s["rows"])
        assert s["total_macs"] == 1_814_073_344 == sum(r["macs"] for r in s["rows"])
    assert also_theirs["input_shape"] == [3, 224, 224]  # timm's pretrained input size by default
    assert max(r["depth"] for r in also_theirs["rows"]) == 1
    assert main(["arch", "summary", "resnet18", "--arch-args", "width=16,stem=small", "--num-classes", "10", "--json"]) == 0
    wide = json.loads(capsys.readouterr().out)
    assert wide["output_shape"] == [10] and wide["total_params"] < 1_000_000


def test_bad_input_from_the_installed_command(cli):
    p = cli("arch", "summary", "nosuch_net", env=ONE_THREAD)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "Unknown architecture" in p.stderr
    p = cli("arch", "compare", "lenet5", "--data", "digits", "--epochs", "1", "--out", "o1", env=ONE_THREAD)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "lenet5 cannot take 1x8x8 inputs" in p.stderr and "--image-size" in p.stderr


@pytest.mark.parametrize("args,needle", [
    (("arch", "summary", "resnet18", "--input", "3,224"), "--input must be C,H,W"),
    (("arch", "summary", "resnet18", "--arch-args", "width"), "KEY=VALUE"),
    (("arch", "summary", "resnet18", "--arch-args", "depth=3"), "no option 'depth'"),
    (("arch", "summary", "resnet18", "--arch-args", "width=wide"), "must be int"),
    (("arch", "summary", "lenet5", "--input", "1,2,2"), "cannot take an input"),
    (("arch", "summary", "timm/no_such_model"), "timm has no architecture"),
    (("arch", "compare", "lenet5", "--data", "no/such/folder", "--epochs", "1", "--out", "o2"), "No such file"),
    (("arch", "compare", "lenet5", "lenet5", "--data", "digits", "--out", "o3"), "named twice"),
    (("arch", "compare", "lenet5", "--data", "digits", "--arch-args", "width=4", "--out", "o4"), "No network here takes"),
    (("arch", "compare", "resnet20", "--data", "digits", "--epochs", "0", "--out", "o5"), "--epochs"),
])
def test_bad_input_is_one_clear_error(args, needle, capsys, tmp_path, monkeypatch):
    from transferkit.cli.main import main

    monkeypatch.chdir(tmp_path)
    assert main(list(args)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err


def _digit_png(path):
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    img = (d.images[0] * 255 / 16).astype(np.uint8)
    Image.fromarray(img).resize((28, 28)).save(path)
    return path


def test_compare_on_digits_end_to_end(cli, tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ("arch", "compare", "lenet5", "plain20", "resnet20", "--data", "digits", "--image-size", "28",
            "--max-samples", "400", "--epochs", "2", "--arch-args", "width=4", "--out", out)
    p = cli(*args, "--json", env=ONE_THREAD)
    assert p.returncode == 0, p.stderr
    printed = json.loads(p.stdout)
    saved = json.loads((out / "results.json").read_text())
    nets = {r["name"]: r for r in saved["networks"]}
    assert list(nets) == ["lenet5", "plain20", "resnet20"] == [r["name"] for r in printed["networks"]]
    assert saved["input_shape"] == [1, 28, 28] and "subset of 400;" in saved["data"]
    assert nets["lenet5"]["params"] == 61_706
    assert nets["plain20"]["params"] < nets["resnet20"]["params"]  # the projections are the only difference
    assert nets["plain20"]["options"] == {"width": 4, "stem": "small"}  # small inputs get the small stem
    for name, layers in (("lenet5", 5), ("plain20", 20), ("resnet20", 20)):
        r = nets[name]
        assert r["weight_layers"] == layers == len(r["grad_norms"])
        assert all(g > 0 for g in r["grad_norms"])
        assert r["epochs"] == 2 and len(r["curves"]["train_loss"]) == 2 and len(r["curves"]["val_acc"]) == 2
        assert r["macs"] > 0 and r["time_per_epoch_s"] > 0
        assert 0 <= r["final_val_acc"] <= 1 and r["final_train_loss"] > 0
        assert (out / name / "model" / "config.json").is_file() and (out / name / "metrics.csv").is_file()
    report = (out / "report.html").read_text()
    assert "data-file='curves.png'" in report and "data-file='gradflow.png'" in report
    assert "final val acc" in report and (out / "config.yaml").is_file()

    # the trained networks are model directories that predict can use (grey model, RGB file)
    import transferkit

    model = transferkit.load(out / "lenet5")
    assert model.task == "arch" and model.class_names == [str(i) for i in range(10)]
    png = _digit_png(tmp_path / "digit.png")
    pred = cli("predict", png, "--model", out / "lenet5", "--json", "--top-k", "3", check=True)
    top = json.loads(pred.stdout.splitlines()[0])["top"]
    assert len(top) == 3 and all(t["label"] in model.class_names for t in top)

    # the run folder is never overwritten; --resume keeps what is finished
    from transferkit.cli.main import main

    capsys.readouterr()
    assert main([str(a) for a in args]) == 2
    assert "already holds files" in capsys.readouterr().err
    assert main([str(a) for a in (*args, "--resume")]) == 0
    assert capsys.readouterr().err.count("already trained") == 3


def test_compare_on_an_image_class_folder(cli, colour_folders, tmp_path):
    out = tmp_path / "cmp"
    p = cli("arch", "compare", "resnet20", "--data", colour_folders, "--image-size", "16", "--epochs", "2",
            "--arch-args", "width=4", "--batch-size", "8", "--lr", "0.02", "--out", out, env=ONE_THREAD)
    assert p.returncode == 0, p.stderr
    assert "resnet20" in p.stdout and "report.html" in p.stdout
    res = json.loads((out / "results.json").read_text())
    assert res["input_shape"] == [3, 16, 16] and res["classes"] == ["blue", "green", "red"]
    image = sorted((colour_folders / "red").iterdir())[0]
    pred = cli("predict", image, "--model", out / "resnet20", "--json", check=True)
    assert json.loads(pred.stdout)["top"][0]["label"] in {"red", "green", "blue"}


def test_split_is_seeded_and_stratified():
    from transferkit.tasks.arch.compare import CompareConfig, load_data

    a = load_data(CompareConfig(names=("lenet5",), data="digits", seed=3))
    b = load_data(CompareConfig(names=("lenet5",), data="digits", seed=3))
    c = load_data(CompareConfig(names=("lenet5",), data="digits", seed=4))
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.val_y, b.val_y)
    assert not torch.equal(a.val_y, c.val_y)
    assert len(a.train_y) + len(a.val_y) == 1797 and abs(len(a.val_y) - 0.2 * 1797) < 10
    counts = torch.bincount(a.val_y, minlength=10)
    assert counts.min() >= 30  # every digit is held out in proportion
    assert a.shape == (1, 8, 8) and len(a.mean) == 1


def test_mnist_split_is_8000_2000(shared_data):
    from transferkit.tasks.arch.compare import CompareConfig, load_data

    d = load_data(CompareConfig(names=("lenet5",), data=str(shared_data / "mnist"), seed=0))
    assert len(d.train_y) == 8000 and len(d.val_y) == 2000 and d.shape == (1, 28, 28)
