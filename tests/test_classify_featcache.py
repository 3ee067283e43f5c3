"""core.featcache: feature rows cached on disk by model identity and file content."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from tests.conftest import make_class_folders
from transferkit.core import featcache


@pytest.fixture(scope="module")
def tiny_model():
    import timm
    import torch

    from transferkit.core.backbones import Preprocessing
    from transferkit.core.modeldir import TransferModel

    torch.manual_seed(0)
    module = timm.create_model("test_efficientnet", pretrained=False, num_classes=0).eval()
    pre = Preprocessing(input_size=(3, 32, 32), crop_pct=1.0)
    return TransferModel(module, {"task": "pretrained", "architecture": "test_efficientnet", "preprocessing": pre.to_dict()})


def files(root):
    return sorted(p for p in root.rglob("*.png"))


def test_second_run_hits_and_matches(tmp_path, tiny_model):
    make_class_folders(tmp_path / "imgs", n_per_class=3, size=24)
    paths = files(tmp_path / "imgs")
    first = featcache.extract_cached(paths, tiny_model, root=tmp_path / "cache", engine="torch")
    assert (first.hits, first.misses) == (0, len(paths))
    second = featcache.extract_cached(paths, tiny_model, root=tmp_path / "cache", engine="torch")
    assert (second.hits, second.misses) == (len(paths), 0)
    np.testing.assert_allclose(first.features, second.features, rtol=1e-6)
    assert second.ok == list(range(len(paths)))


def test_keyed_by_content_not_name(tmp_path, tiny_model):
    make_class_folders(tmp_path / "imgs", n_per_class=2, size=24)
    paths = files(tmp_path / "imgs")
    root = tmp_path / "cache"
    featcache.extract_cached(paths, tiny_model, root=root, engine="torch")
    moved = tmp_path / "moved.png"
    shutil.copy(paths[0], moved)
    assert featcache.extract_cached([moved], tiny_model, root=root, engine="torch").hits == 1
    from PIL import Image

    Image.new("RGB", (24, 24), (1, 2, 3)).save(paths[1])  # edited in place: must be recomputed
    res = featcache.extract_cached(paths, tiny_model, root=root, engine="torch")
    assert res.misses == 1 and res.hits == len(paths) - 1


def test_key_changes_with_weights_preprocessing_and_layer(tiny_model):
    import copy

    import torch

    base = featcache.extractor_key(tiny_model, "pre_logits")
    assert featcache.extractor_key(tiny_model, "pooled") != base
    other = copy.deepcopy(tiny_model)
    with torch.no_grad():
        next(other.module.parameters()).add_(1e-3)
    assert featcache.extractor_key(other, "pre_logits") != base
    other2 = copy.deepcopy(tiny_model)
    other2.config["preprocessing"] = {**other2.config["preprocessing"], "interpolation": "bilinear"}
    assert featcache.extractor_key(other2, "pre_logits") != base
    assert featcache.extractor_key(tiny_model, "pre_logits", {"flip": True}) != base


def test_unreadable_files_are_skipped_not_cached(tmp_path, tiny_model):
    make_class_folders(tmp_path / "imgs", n_per_class=2, size=24)
    paths = files(tmp_path / "imgs")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    res = featcache.extract_cached([bad, *paths], tiny_model, root=tmp_path / "cache", engine="torch")
    assert res.ok == list(range(1, len(paths) + 1)) and len(res.skipped) == 1
    assert len(featcache.FeatureCache(featcache.extractor_key(tiny_model, "pre_logits"), tmp_path / "cache")) == len(paths)


def test_puts_merge_and_file_loads_without_pickle(tmp_path):
    a = featcache.FeatureCache("k", tmp_path)
    b = featcache.FeatureCache("k", tmp_path)
    a.put({"d1": np.ones(4)})
    b.put({"d2": np.zeros(4)})  # b never read d1, the merge keeps it
    assert set(featcache.FeatureCache("k", tmp_path).get(["d1", "d2", "d3"])) == {"d1", "d2"}
    with np.load(tmp_path / "k.npz", allow_pickle=False) as z:
        assert z["features"].shape == (2, 4)


def test_damaged_cache_file_is_ignored(tmp_path, capsys):
    (tmp_path / "k.npz").write_bytes(b"garbage")
    cache = featcache.FeatureCache("k", tmp_path)
    assert cache.get(["x"]) == {}
    cache.put({"x": np.ones(3)})
    assert set(cache.get(["x"])) == {"x"}
    assert "damaged" in capsys.readouterr().err
