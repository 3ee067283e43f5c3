"""Model directories: round trip, atomic replacement, safe and clear loading errors, ONNX export."""

from __future__ import annotations

import json

import pytest
import torch

import transferkit
from transferkit.core import backbones, modeldir
from transferkit.errors import TransferkitError


@pytest.fixture
def tiny_model():
    import timm

    torch.manual_seed(0)
    module = timm.create_model("test_efficientnet", num_classes=3).eval()
    config = {
        "task": "pretrained",
        "architecture": "test_efficientnet",
        "num_classes": 3,
        "class_names": ["a", "b", "c"],
        "preprocessing": backbones.Preprocessing(input_size=(3, 64, 64), crop_pct=1.0).to_dict(),
    }
    return modeldir.TransferModel(module, config)


def _out(module):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return module.eval()(x)


def test_round_trip(tmp_path, tiny_model):
    path = tiny_model.save(tmp_path / "m")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["format"] == "transferkit-model" and cfg["transferkit_version"] == transferkit.__version__
    back = transferkit.load(path)
    assert back.class_names == ["a", "b", "c"] and back.preprocessing.input_size == (3, 64, 64)
    torch.testing.assert_close(_out(back.module), _out(tiny_model.module))


def test_run_directory_with_model_subfolder_loads(tmp_path, tiny_model):
    tiny_model.save(tmp_path / "run" / "model")
    assert transferkit.load(tmp_path / "run").class_names == ["a", "b", "c"]


def test_compiled_or_wrapped_modules_save_unwrapped(tmp_path, tiny_model):
    class Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner  # what torch.compile's OptimizedModule holds

    modeldir.save_model_dir(Wrapper(tiny_model.module), tiny_model.config, tmp_path / "m")
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "m" / "model.safetensors")).keys()
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in keys)
    transferkit.load(tmp_path / "m")


def test_overwrite_replaces_whole_directory_and_refuses_foreign_folders(tmp_path, tiny_model):
    path = tiny_model.save(tmp_path / "m")
    (path / "stale.txt").write_text("from an older save")
    tiny_model.save(path)
    assert not (path / "stale.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(TransferkitError, match="not a transferkit model directory"):
        tiny_model.save(foreign)
    assert (foreign / "holiday.jpg").read_bytes() == b"precious"


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    target = modeldir.atomic_write_text(tmp_path / "f.json", "old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(modeldir.os, "replace", boom)
    with pytest.raises(OSError):
        modeldir.atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_loading_errors_are_clear(tmp_path, tiny_model):
    with pytest.raises(TransferkitError, match="not a transferkit model directory"):
        transferkit.load(tmp_path)
    path = tiny_model.save(tmp_path / "m")
    (path / "config.json").write_text("{broken")
    with pytest.raises(TransferkitError, match="not valid JSON"):
        transferkit.load(path)
    path = tiny_model.save(tmp_path / "m2")
    cfg = json.loads((path / "config.json").read_text())
    cfg["num_classes"] = 5
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(TransferkitError, match="do not match the architecture"):
        transferkit.load(path)
    path = tiny_model.save(tmp_path / "m3")
    (path / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(TransferkitError, match="damaged"):
        transferkit.load(path)
    cfg["task"] = "no_such_task"
    path = tiny_model.save(tmp_path / "m4")
    (path / "config.json").write_text(json.dumps({**cfg, "num_classes": 3}))
    with pytest.raises(TransferkitError, match="Unknown task"):
        transferkit.load(path)


def test_onnx_export_matches_pytorch(tmp_path, tiny_model):
    path = tiny_model.save(tmp_path / "m")
    res = transferkit.export(path)
    assert res["path"].endswith("model.onnx")
    assert res["max_abs_diff"] < 1e-4
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(res["path"], providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 64, 64)
    got = sess.run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, _out_of(tiny_model.module, x), atol=1e-4)


def _out_of(module, x):
    with torch.no_grad():
        return module.eval()(x).numpy()
