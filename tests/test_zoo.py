"""The model zoo: `transferkit models`, the lectures' classic models, SqueezeNet via torchvision, hub loading on local files,
and `arch summary`'s Keras parameter counts."""

from __future__ import annotations

import json

import pytest
import torch

from transferkit.core import backbones, zoo
from transferkit.errors import TransferkitError

# parameter counts of the PyTorch/timm builds (Keras' figures differ only by BatchNorm statistics: see keras_note)
LECTURE = {
    "VGG-19": ("vgg19.tv_in1k", 143_667_240, 224),
    "Inception v3": ("inception_v3.tv_in1k", 23_834_568, 299),
    "Inception-ResNet v2": ("inception_resnet_v2.tf_in1k", 55_843_464, 299),
    "ResNet-50": ("resnet50.tv_in1k", 25_557_032, 224),
    "SqueezeNet 1.1": ("squeezenet1_1", 1_235_496, 224),
}


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_zoo_rows_list_offline_lites_and_the_lecture_models():
    rows = {r.name: r for r in zoo.rows()}
    for name, size in (("efficientnet_lite0", 224), ("efficientnet_lite1", 240), ("efficientnet_lite2", 260)):
        if backbones._package_weights_path(backbones.registered_weights()[name]) is None:
            continue  # the package is an ordinary dependency; tolerate a partial install
        r = rows[name]
        assert r.offline and r.input_size == size and r.top1 and "tensorflow/tpu" in r.top1_source
    assert rows["efficientnet_lite2"].params == 6_092_072
    for lecture, (name, params, size) in LECTURE.items():
        r = rows[name]
        assert r.lecture == lecture and r.params == params and r.input_size == size and not r.offline
        assert r.top1 and r.top1_source
    for r in rows.values():  # the recorded counts are the architectures' own
        assert r.params == zoo.count_params(r.architecture), r.name
    text = zoo.table(list(rows.values()))
    assert "143,667,240" in text and "[1] TF EfficientNet-Lite README" in text


def test_keras_note_gives_the_lectures_figures():
    from transferkit.tasks.arch.summary import keras_note, summarize

    assert "23,851,784" in keras_note(23_834_568, 17_216)
    assert "55,873,736" in keras_note(55_843_464, 30_272)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 6 * 6, 2))
    s = summarize(net, (3, 8, 8))
    assert s.total_params == 108 + 8 + 144 * 2 + 2
    assert any(f"{s.total_params + 8:,}" in n and f"{s.total_params + 4:,}" in n for n in s.notes)


def test_squeezenet_loads_a_torchvision_file_and_extracts_features(tmp_path):
    import torchvision

    torch.manual_seed(0)
    ref = torchvision.models.squeezenet1_1().eval()
    path = tmp_path / "squeezenet1_1.pth"
    torch.save(ref.state_dict(), path)
    r = backbones.resolve("squeezenet1_1", weights=path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(r.module(x), ref(x), atol=1e-5)
        from transferkit.core.inference import embed

        assert embed(r.module, x).shape == (2, 512)
    # a saved model directory rebuilds the torchvision architecture
    model = backbones.to_model(r)
    model.save(tmp_path / "sq")
    import transferkit

    again = transferkit.load(tmp_path / "sq")
    with torch.no_grad():
        assert torch.allclose(again.module(x), ref(x), atol=1e-5)


def test_hub_loading_code_runs_on_a_local_file(tmp_path):
    """The hub path (timm's pretrained loader, checkpoint filter included) with a file instead of a download."""
    import timm

    torch.manual_seed(1)
    src = timm.create_model("test_resnet").eval()
    path = tmp_path / "w.pth"
    torch.save(src.state_dict(), path)
    entry = backbones._entry_for("test_resnet.r160_in1k")
    module = backbones._from_hub("test_resnet.r160_in1k", entry, file=path)
    assert module is not None
    for k, v in src.state_dict().items():
        assert torch.equal(module.state_dict()[k], v), k
    assert backbones._timm_from_file(entry, path) is not None
    # a file that fits neither by name nor in order: the first, clear error stays
    bad = {f"x{i}": torch.zeros(3) for i in range(3)}
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(TransferkitError, match="do not fit"):
        backbones.resolve("test_resnet.r160_in1k", weights=tmp_path / "bad.pth")


def test_models_cli_table_and_json(capsys):
    from transferkit.cli.main import main  # the installed command is run by test_predict_cli

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for word in ("efficientnet_lite2", "VGG-19", "Inception-ResNet v2", "SqueezeNet 1.1", "ImageNet top-1", "img/s"):
        assert word in out
    assert main(["models", "--json"]) == 0
    rows = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert {r["name"] for r in rows} >= {v[0] for v in LECTURE.values()}
