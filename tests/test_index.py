"""Similarity index: own top hit at 1.0, duplicates, both backends, autoencoder codes, grids, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import make_class_folders
from transferkit.errors import TransferkitError
from transferkit.tasks.index import ANN_THRESHOLD, ExactBackend, FaissBackend, Index, build, choose_backend, duplicates, search
from transferkit.tasks.index.embed import l2_normalise


def unit_vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    return l2_normalise(np.random.default_rng(seed).normal(size=(n, d)))


# --------------------------------------------------------------------------- backends


def test_exact_and_faiss_backends_agree_and_rank_by_cosine():
    emb = unit_vectors(300, 16)
    queries = l2_normalise(emb[:20] + 0.05 * np.random.default_rng(1).normal(size=(20, 16)))
    s_np, i_np = ExactBackend(emb).search(queries, 5)
    s_fa, i_fa = FaissBackend(emb).search(queries, 5)
    brute = queries @ emb.T
    assert np.array_equal(i_np[:, 0], brute.argmax(axis=1))
    assert np.allclose(s_np[:, 0], brute.max(axis=1), atol=1e-6)
    assert np.all(np.diff(s_np, axis=1) <= 1e-7)  # best first
    assert np.array_equal(i_np[:, 0], i_fa[:, 0])  # HNSW finds the true nearest on this small set
    assert np.allclose(s_np[:, 0], s_fa[:, 0], atol=1e-5)
    # k larger than the collection: every item, sorted
    s_all, i_all = ExactBackend(emb[:4]).search(queries[:2], 10)
    assert s_all.shape == (2, 4) and sorted(i_all[0].tolist()) == [0, 1, 2, 3]


def test_duplicate_pairs_exact_and_faiss():
    emb = unit_vectors(50, 8, seed=2)
    emb[7] = emb[3]
    emb[20] = l2_normalise((emb[11] + 0.01 * np.ones(8))[None])[0]
    want = {(3, 7), (11, 20)}
    got_np = {(i, j) for i, j, _ in ExactBackend(emb).pairs_above(0.99)}
    got_fa = {(i, j) for i, j, _ in FaissBackend(emb).pairs_above(0.99)}
    assert got_np == want and got_fa == want


def test_backend_chosen_by_size():
    assert choose_backend(10) == "numpy"
    assert choose_backend(ANN_THRESHOLD) == "faiss"
    assert choose_backend(10, threshold=5) == "faiss"
    assert choose_backend(10_000_000, "numpy") == "numpy"
    with pytest.raises(TransferkitError):
        choose_backend(10, "annoy")


# --------------------------------------------------------------------------- files with the pretrained backbone


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    root = make_class_folders(tmp_path_factory.mktemp("photos") / "imgs", n_per_class=4, size=32)
    shutil.copy(root / "red" / "red_000.png", root / "red" / "red_copy.png")
    return root


@pytest.mark.parametrize("backend", ["numpy", "faiss"])
def test_search_returns_the_image_itself_first_with_similarity_one(tmp_path, photo_folder, cli, backend):
    out = tmp_path / f"idx-{backend}"
    proc = cli("index", "build", photo_folder, "--out", out, "--backend", backend)
    assert proc.returncode == 0, proc.stderr
    assert "indexed 13 images" in proc.stdout and f"{backend} search" in proc.stdout
    meta = json.loads((out / "index.json").read_text())
    assert meta["backend"] == backend and meta["count"] == 13 and meta["model"] == "efficientnet_lite0"
    assert (out / "index.faiss").is_file() == (backend == "faiss")
    emb = np.load(out / "embeddings.npy")
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)

    query = photo_folder / "green" / "green_002.png"
    proc = cli("index", "search", out, query, "-k", "3", "--json", "--grid", tmp_path / "grid.png")
    assert proc.returncode == 0, proc.stderr
    hits = json.loads(proc.stdout.splitlines()[0])["hits"]
    assert Path(hits[0]["name"]) == query.resolve() and hits[0]["similarity"] == pytest.approx(1.0, abs=1e-4)
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert all(Path(h["name"]).parent.name == "green" for h in hits)  # same colour: the nearest images
    with Image.open(tmp_path / "grid.png") as im:
        assert im.size[0] > im.size[1] > 50  # one row: query + 3 hits

    proc = cli("index", "duplicates", out, "--threshold", "0.999", "--json")
    assert proc.returncode == 0, proc.stderr
    pairs = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(pairs) == 1
    assert {Path(pairs[0]["a"]).name, Path(pairs[0]["b"]).name} == {"red_000.png", "red_copy.png"}


def test_faiss_chosen_automatically_above_the_threshold(tmp_path, photo_folder):
    index = build(photo_folder, tmp_path / "auto", ann_threshold=5)
    assert index.meta["backend"] == "faiss"
    loaded = Index.load(tmp_path / "auto")
    assert loaded.backend.name == "faiss"
    res = search(loaded, [str(photo_folder / "blue" / "blue_001.png")], k=2, skip_self=True)
    assert len(res[0]["hits"]) == 2
    assert all(not h["name"].endswith("blue_001.png") for h in res[0]["hits"])


# --------------------------------------------------------------------------- arrays with an autoencoder's codes


@pytest.fixture(scope="module")
def digits_ae(tmp_path_factory) -> Path:
    from transferkit.tasks.autoencoder import AEConfig, fit

    return fit(AEConfig(kind="dense", hidden=(64,), latent=12, epochs=15, batch_size=32, max_images=600),
               "digits", tmp_path_factory.mktemp("ae") / "run")


def test_autoencoder_codes_index_of_digits(tmp_path, digits_ae, cli):
    out = tmp_path / "digits.index"
    build("digits", out, model=digits_ae)
    index = Index.load(out)
    assert len(index) == 1797 and index.embeddings.shape[1] == 12 and index.meta["model_kind"] == "autoencoder"
    assert index.thumbs is not None and index.thumbs.shape == (1797, 8, 8)
    res = search(index, ["digits:17"], k=5)[0]
    assert res["hits"][0]["name"] == "digits:17" and res["hits"][0]["similarity"] == pytest.approx(1.0, abs=1e-5)
    # neighbours in code space mostly share the digit
    same = []
    for r in search(index, [f"digits:{i}" for i in range(0, 400, 8)], k=5, skip_self=True):
        own = index.labels[int(r["query"].split(":")[1])]
        same += [h["label"] == str(own) for h in r["hits"]]
    assert np.mean(same) > 0.6
    # a PNG file of an indexed digit embeds to the same code
    png = tmp_path / "d17.png"
    Image.fromarray(index.thumbs[17]).save(png)
    proc = cli("index", "search", out, png, "digits:3", "-k", "2", "--grid", tmp_path / "g.png")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].endswith("d17.png") and "digits:17" in lines[1] and "1.0000" in lines[1]
    assert lines[3] == "digits:3" and "digits:3" in lines[4]
    with Image.open(tmp_path / "g.png") as im:  # two rows: query + 2 hits each
        assert im.size[0] > 100 and im.size[1] > 100


# --------------------------------------------------------------------------- errors


def test_bad_input_errors(tmp_path, cli):
    (tmp_path / "empty").mkdir()
    proc = cli("index", "build", tmp_path / "empty", "--out", tmp_path / "i")
    assert proc.returncode == 2 and "No images" in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(TransferkitError, match="not an index folder"):
        search(tmp_path / "nope", ["x.png"])
    idx = Index(unit_vectors(3, 4), ["a", "b", "c"], {"backend": "numpy"})
    idx.save(tmp_path / "tiny")
    with pytest.raises(TransferkitError, match="neither an image file nor an item"):
        search(tmp_path / "tiny", ["zzz"], k=1)
    with pytest.raises(TransferkitError, match="between -1 and 1"):
        duplicates(tmp_path / "tiny", threshold=2.0)
    with pytest.raises(TransferkitError, match="at least 1"):
        search(tmp_path / "tiny", ["a"], k=0)
    assert search(tmp_path / "tiny", ["b"], k=1)[0]["hits"][0]["name"] == "b"
