"""`transferkit serve`: the API for each task on tiny models, batching, the page, and the safety rows."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from tests.conftest import transferkit_cmd  # noqa: E402
from transferkit.serve import check_bind, is_loopback  # noqa: E402
from transferkit.serve.app import ServeSettings, create_app  # noqa: E402
from transferkit.errors import TransferkitError  # noqa: E402

CLASSES = ["red", "green", "blue"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def png(colour=(200, 40, 40), size=(24, 20), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- tiny models of each task


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Model directories of each servable task on main: untrained where serving does not care, tiny fits where a
    task's files come only from its fit (seq2seq vocabularies, a Siamese threshold)."""
    import timm

    from transferkit.core import backbones, modeldir

    root = tmp_path_factory.mktemp("serve_models")
    out: dict[str, Path] = {}
    # classifier: the test backbone, no weights
    torch.manual_seed(0)
    module = timm.create_model("test_efficientnet", num_classes=3).eval()
    config = {"task": "pretrained", "architecture": "test_efficientnet", "num_classes": 3, "class_names": CLASSES,
              "preprocessing": backbones.Preprocessing(input_size=(3, 32, 32), crop_pct=1.0).to_dict()}
    out["clf"] = modeldir.TransferModel(module, config).save(root / "clf")
    # autoencoder (dense, 8x8 grey), and a novelty run around it
    from transferkit.core.datasets import ArrayData
    from transferkit.tasks.autoencoder.config import AEConfig
    from transferkit.tasks.autoencoder.train import build_network, model_config

    arrays = ArrayData(np.zeros((4, 8, 8), np.uint8), None, [], "test")
    aconf = model_config(AEConfig(kind="dense", hidden=(16,), latent=4), arrays, "test")
    out["ae"] = modeldir.save_model_dir(build_network(aconf), aconf, root / "ae")
    nov = root / "nov"
    shutil.copytree(out["ae"], nov / "autoencoder" / "model")
    (nov / "novelty.json").write_text(json.dumps({"method": "reconstruction", "threshold": 0.2,
                                                  "autoencoder": "autoencoder", "percentile": 99}))
    out["nov"] = nov
    # seq2seq: a few seconds of training to reverse strings
    from transferkit.tasks.seq2seq.train import Seq2seqConfig, fit as s2s_fit

    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abcdef"), rng.integers(2, 6))) for _ in range(120)]
    (root / "rev.tsv").write_text("".join(f"{w}\t{w[::-1]}\n" for w in words), encoding="utf-8")
    cfg = Seq2seqConfig(level="char", hidden=16, embed=8, attention="none", dropout=0.0, label_smoothing=0.0,
                        batch_size=32, epochs=1, patience=None, time_limit=None, beam=1, device="cpu", seed=0, precision="32")
    s2s_fit(cfg, root / "rev.tsv", root / "s2s")
    out["s2s"] = root / "s2s"
    return out


@pytest.fixture(scope="module")
def siamese_run(tmp_path_factory) -> dict[str, Path]:
    """A small-cnn trained for a handful of steps on generated shapes (its fit stores a verification threshold)."""
    from transferkit.tasks.siamese import SiameseConfig, fit

    root = tmp_path_factory.mktemp("siamese")
    rng = np.random.default_rng(0)
    for split, n_ids in (("train", 8), ("gallery", 3)):
        for k in range(n_ids):
            d = root / split / f"id{k}"
            d.mkdir(parents=True)
            base = rng.integers(0, 255, (4, 4)).astype(np.float32)
            for i in range(4):
                img = np.kron(base, np.ones((8, 8))) + rng.normal(0, 10, (32, 32))
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"{i}.png")
    cfg = SiameseConfig(image_size=32, width=0.5, embedding=16, epochs=1, steps_per_epoch=3, batch_size=16, per_class=4,
                        val_classes=0.25, warmup_steps=1, precision="32", device="cpu", seed=0, tta=0, augment_p=0.0,
                        time_budget=None)
    run = fit(cfg, root / "train", root / "run")
    return {"run": Path(run), "gallery": root / "gallery"}


def _client(models, names=("clf",), **kw) -> TestClient:
    specs = [f"{n}={models[n]}" for n in names]
    return TestClient(create_app(ServeSettings(models=specs, **kw)))


@pytest.fixture(scope="module")
def client(models):
    with _client(models, ("clf", "ae", "nov", "s2s"), max_batch=8, max_wait_ms=300) as c:
        yield c


# --------------------------------------------------------------------------- the API


def test_health_and_models(client):
    assert client.get("/health").json()["status"] == "ok"
    r = client.get("/models")
    assert r.status_code == 200, r.text
    listed = {m["name"]: m for m in r.json()}
    assert set(listed) == {"clf", "ae", "nov", "s2s"}
    assert listed["clf"]["task"] == "pretrained" and listed["clf"]["classes"] == CLASSES
    assert listed["clf"]["input_size"] == [3, 32, 32] and listed["clf"]["input"] == "image"
    assert listed["s2s"]["input"] == "text" and listed["nov"]["threshold"] == 0.2
    assert listed["ae"]["input_size"] == [1, 8, 8]


def test_classifier_answers_like_predict_json(client, models, tmp_path):
    import transferkit

    data = png()
    r = client.post("/models/clf/predict", files={"file": ("red.png", data, "image/png")}, params={"top_k": 2})
    assert r.status_code == 200, r.text
    [got] = r.json()
    assert got["path"] == "red.png" and len(got["top"]) == 2 and got["top"][0]["prob"] >= got["top"][1]["prob"]
    (tmp_path / "red.png").write_bytes(data)
    [want] = transferkit.predict([tmp_path / "red.png"], model=models["clf"], top_k=2)
    assert [t["label"] for t in got["top"]] == [t["label"] for t in want["top"]]
    assert got["top"][0]["prob"] == pytest.approx(want["top"][0]["prob"], abs=1e-5)
    # JSON with base64 gives the same answer; several images in one request come back in order
    r2 = client.post("/models/clf/predict", json={"image": base64.b64encode(data).decode(), "name": "x/../red.png"},
                     params={"top_k": 2})
    assert r2.json()[0]["top"] == got["top"] and r2.json()[0]["path"] == "red.png"
    r3 = client.post("/models/clf/predict", files=[("file", ("a.png", png((0, 0, 255)))), ("file", ("b.png", data))])
    assert [x["path"] for x in r3.json()] == ["a.png", "b.png"]


def test_autoencoder_novelty_and_text(client):
    [ae] = client.post("/models/ae/predict", files={"file": ("g.png", png((90, 90, 90)))}).json()
    assert ae["score"] >= 0 and ae["reconstruction"].startswith("data:image/png;base64,")
    [nov] = client.post("/models/nov/predict", files={"file": ("g.png", png((90, 90, 90)))}).json()
    assert nov["score"] == pytest.approx(ae["score"], rel=1e-5) and nov["novel"] == (nov["score"] > 0.2)
    r = client.post("/models/s2s/predict", json={"texts": ["abc", "fed"]})
    assert r.status_code == 200, r.text
    assert [x["source"] for x in r.json()] == ["abc", "fed"] and all("translation" in x for x in r.json())
    # the wrong kind of input: one sentence, 400
    r = client.post("/models/s2s/predict", files={"file": ("g.png", png())})
    assert r.status_code == 400 and "text" in r.json()["detail"]
    r = client.post("/models/clf/predict", json={"text": "hello"})
    assert r.status_code == 400 and "image" in r.json()["detail"]


def test_siamese_verify_with_a_gallery(siamese_run, tmp_path):
    probe = next((siamese_run["gallery"] / "id1").glob("*.png")).read_bytes()
    settings = ServeSettings(models=[f"faces={siamese_run['run']}"], galleries={"*": str(siamese_run["gallery"])})
    with TestClient(create_app(settings)) as c:
        assert c.get("/models").json()[0]["classes"] == ["id0", "id1", "id2"]
        [got] = c.post("/models/faces/predict", files={"file": ("p.png", probe)}).json()
    from transferkit.tasks.siamese import verify

    (tmp_path / "p.png").write_bytes(probe)
    [want] = verify(siamese_run["run"], siamese_run["gallery"], [tmp_path / "p.png"])
    assert got["identity"] == want["identity"] == "id1"  # its own gallery image: distance ~0
    assert got["distance"] == pytest.approx(want["distance"], abs=1e-4) and got["match"] == want["match"]
    with pytest.raises(TransferkitError, match="--gallery"):
        create_app(ServeSettings(models=[str(siamese_run["run"])]))


@pytest.fixture(scope="module")
def gen_models(tmp_path_factory) -> dict[str, Path]:
    """A conditional DCGAN, a pix2pix and a captioner, each fitted for a moment on generated images."""
    from tests.caption_data import make_shapes
    from tests.test_gan import COLOURS as BLOB_COLOURS, blob, tiny
    from transferkit.tasks.caption.train import CaptionConfig, fit as cap_fit
    from transferkit.tasks.gan import fit as gan_fit

    root = tmp_path_factory.mktemp("gen")
    rng = np.random.default_rng(0)
    for name, col in BLOB_COLOURS.items():
        (root / "blobs" / name).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(blob(rng, col)).save(root / "blobs" / name / f"{i}.png")
        (root / "pairs").mkdir(exist_ok=True)
        for i in range(4):
            Image.fromarray(np.concatenate([blob(rng, col), blob(rng, col)], axis=1)).save(root / "pairs" / f"{name}{i}.png")
    out = {"gan": gan_fit(tiny(conditional=True, epochs=1, fid=False), root / "blobs", root / "cgan")}
    out["p2p"] = gan_fit(tiny(kind="pix2pix", epochs=1, batch_size=4, fid=False, val_fraction=0.25), root / "pairs",
                         root / "p2p")
    data = make_shapes(root / "shapes", n_per=2, size=32)
    cfg = CaptionConfig(encoder="test_efficientnet", weights="none", embed=16, hidden=16, min_count=1, epochs=1,
                        batch_size=16, precision="32", patience=None, time_budget=None, val_fraction=0.25,
                        device="cpu", beam=1, val_images=4)
    with pytest.MonkeyPatch.context() as mp:  # the feature cache in this module's folder, for this fit only
        mp.setenv("TRANSFERKIT_CACHE", str(root / "cache"))
        cap_fit(cfg, data, root / "cap")
    out["cap"] = root / "cap"
    return out


def test_gan_and_caption(gen_models):
    specs = [f"{k}={v}" for k, v in gen_models.items()]
    with TestClient(create_app(ServeSettings(models=specs, max_batch=4))) as c:
        listed = {m["name"]: m for m in c.get("/models").json()}
        assert listed["gan"]["input"] == "generate" and listed["gan"]["classes"] == ["blue", "red"]
        assert listed["p2p"]["input"] == "image" and listed["cap"]["task"] == "caption"
        r = c.post("/models/gan/predict", json={"n": 3, "seed": 5, "label": "red"})
        assert r.status_code == 200, r.text
        rows = r.json()
        assert len(rows) == 3 and all(x["label"] == "red" for x in rows)
        img = Image.open(io.BytesIO(base64.b64decode(rows[0]["png_base64"])))
        assert img.size == (16, 16)
        assert c.post("/models/gan/predict", json={"n": 3, "seed": 5, "label": "red"}).json() == rows  # seeded
        assert c.post("/models/gan/predict", json={"n": 1000}).status_code == 400
        [tr] = c.post("/models/p2p/predict", files={"file": ("b.png", png((30, 30, 220), (16, 16)))}).json()
        assert tr["path"] == "b.png" and Image.open(io.BytesIO(base64.b64decode(tr["png_base64"]))).size == (16, 16)
        [cap] = c.post("/models/cap/predict", files={"file": ("s.png", png((200, 40, 40), (32, 32)))}).json()
        assert cap["path"] == "s.png" and isinstance(cap["caption"], str) and "score" in cap


def test_detector_answers_like_detect_predict(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from detect_data import make_boxes, write_voc
    from transferkit.tasks.detect import DetectConfig, fit, predict

    write_voc(tmp_path / "voc", make_boxes(8, 64, seed=0, negatives=1))
    run = fit(DetectConfig(epochs=1, val_fraction=0.25, backbone="test_efficientnet", weights="none", image_size=64,
                           batch_size=8, precision="32", seed=0), tmp_path / "voc", tmp_path / "run")
    photo = next((tmp_path / "voc" / "images").glob("*.png"))
    cfg_file = Path(run) / "model" / "config.json"  # a moment of training scores low: show every box, up to 5
    cfg = json.loads(cfg_file.read_text())
    cfg["detect"].update(conf=0.0, max_det=5)
    cfg_file.write_text(json.dumps(cfg))
    with TestClient(create_app(ServeSettings(models=[f"det={run}"]))) as c:
        assert c.get("/models").json()[0]["task"] == "detect"
        r = c.post("/models/det/predict", files={"file": (photo.name, photo.read_bytes())})
    assert r.status_code == 200, r.text
    [got] = r.json()
    [want] = predict(run, [photo])
    assert got["path"] == photo.name and (got["width"], got["height"]) == (want["width"], want["height"])
    assert len(got["boxes"]) == 5 and [b["label"] for b in got["boxes"]] == [b["label"] for b in want["boxes"]]
    for g, w in zip(got["boxes"], want["boxes"]):
        assert g["xyxy"] == pytest.approx(w["xyxy"], abs=0.2) and g["score"] == pytest.approx(w["score"], abs=1e-3)


def test_classify_run_and_embedding_novelty(models, tmp_path, monkeypatch):
    """A `classify fit` run directory (features strategy) and an embedding-method novelty run on its model."""
    from tests.conftest import make_class_folders
    from transferkit.tasks.classify import ClassifyConfig, fit as cls_fit
    from transferkit.tasks.novelty import NoveltyConfig, fit as nov_fit, score

    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "cache"))
    data = make_class_folders(tmp_path / "colours", n_per_class=6, size=32)
    run = cls_fit(ClassifyConfig(backbone="test_efficientnet", weights="none", image_size=32, batch_size=4, seed=0,
                                 precision="32"), data, tmp_path / "cls")
    nov = nov_fit(NoveltyConfig(method="embedding", model=str(models["clf"]), neighbours=2), data / "red",
                  tmp_path / "nov")
    probe = tmp_path / "probe.png"
    probe.write_bytes(png((40, 40, 200), (32, 32)))
    with TestClient(create_app(ServeSettings(models=[f"cls={run}", f"nov={nov}"]))) as c:
        listed = {m["name"]: m for m in c.get("/models").json()}
        assert listed["cls"]["task"] == "classify" and listed["cls"]["classes"] == ["blue", "green", "red"]
        assert listed["nov"]["method"] == "embedding"
        [got] = c.post("/models/cls/predict", files={"file": ("probe.png", probe.read_bytes())}).json()
        [nv] = c.post("/models/nov/predict", files={"file": ("probe.png", probe.read_bytes())}).json()
    import transferkit

    [want] = transferkit.predict([probe], model=run)
    assert [t["label"] for t in got["top"]] == [t["label"] for t in want["top"]]
    [want_nov] = score(nov, [probe])
    assert nv["score"] == pytest.approx(want_nov["score"], abs=1e-4) and nv["novel"] == want_nov["novel"]


def test_unknown_task_is_refused_with_one_line(models, tmp_path):
    d = tmp_path / "weird"
    shutil.copytree(models["clf"], d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "task": "telepathy"}))
    with pytest.raises(TransferkitError, match="cannot serve yet"):
        create_app(ServeSettings(models=[str(d)]))
    with pytest.raises(TransferkitError, match="Two models"):
        create_app(ServeSettings(models=[f"a={models['clf']}", f"a={models['ae']}"]))


def test_serve_uses_only_public_functions_of_the_tasks():
    """The serving contract: serve calls each task's public functions (``predict`` and friends), never a private
    one (leading underscore), so a task may rework its internals without breaking serve."""
    import ast

    import transferkit.serve

    for path in sorted(Path(transferkit.serve.__file__).parent.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("transferkit.") \
                    and not node.module.startswith("transferkit.serve"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name}:{node.lineno} imports {private} from {node.module}"
                assert not any(part.startswith("_") for part in node.module.split(".")), f"{path.name}:{node.lineno}"
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                owner = node.value
                assert isinstance(owner, ast.Name) and owner.id == "self", \
                    f"{path.name}:{node.lineno} reaches into {ast.unparse(node)}"


# --------------------------------------------------------------------------- batching


def test_concurrent_requests_are_batched_and_answer_as_alone(client):
    batcher = client.app.state.batchers["clf"]
    colours = [(i * 30 % 255, 200 - i * 20, i * 13 % 255) for i in range(8)]
    alone = [client.post("/models/clf/predict", files={"file": (f"{i}.png", png(c))}).json()[0]
             for i, c in enumerate(colours)]
    batcher.sizes.clear()
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda ic: client.post("/models/clf/predict",
                                                       files={"file": (f"{ic[0]}.png", png(ic[1]))}).json()[0],
                                 enumerate(colours)))
    assert sum(k * v for k, v in batcher.sizes.items()) == 8
    assert max(batcher.sizes) > 1, batcher.sizes  # grouped, not one forward pass each
    for a, t in zip(alone, together):
        assert a["path"] == t["path"] and a["top"][0]["label"] == t["top"][0]["label"]
        assert a["top"][0]["prob"] == pytest.approx(t["top"][0]["prob"], abs=1e-5)
    assert client.get("/stats").json()["clf"]


def test_a_lone_request_does_not_wait_for_company(models):
    with _client(models, max_batch=8, max_wait_ms=5000) as c:
        c.post("/models/clf/predict", files={"file": ("a.png", png())})  # warm
        t = time.perf_counter()
        assert c.post("/models/clf/predict", files={"file": ("a.png", png())}).status_code == 200
        assert time.perf_counter() - t < 2.5  # not the 5 s wait window: nobody else was on the way


def test_max_batch_one_never_groups(models):
    with _client(models, max_batch=1, max_wait_ms=300) as c:
        with ThreadPoolExecutor(6) as pool:
            codes = list(pool.map(lambda i: c.post("/models/clf/predict", files={"file": ("a.png", png())}).status_code,
                                  range(6)))
        assert codes == [200] * 6 and dict(c.app.state.batchers["clf"].sizes) == {1: 6}


# --------------------------------------------------------------------------- the page


def test_page_is_served_and_offline(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert "<select id=\"model\"" in html and "models/" in html
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html, re.I), "the page must not load anything external"
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", html, re.I)  # everything inline
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/openapi.json" in docs.text
    assert not re.search(r"https?://", docs.text), "the API docs must work offline too"
    for src in re.findall(r"(?:src|href)=['\"]([^'\"]+)['\"]", docs.text):
        assert client.get(src).status_code == 200, src
    assert client.get("/docs-assets/..%2F..%2Fpage.html").status_code == 404
    spec = client.get("/openapi.json").json()
    assert "/models/{name}/predict" in spec["paths"]


def test_page_script_parses(client, tmp_path):
    """The page's JavaScript is at least valid (node --check) where Node.js is installed."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("no Node.js to check the page's script")
    script = re.search(r"<script>(.*)</script>", client.get("/").text, re.S).group(1)
    (tmp_path / "page.js").write_text(script, encoding="utf-8")
    r = subprocess.run([node, "--check", str(tmp_path / "page.js")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@contextlib.contextmanager
def _served(app):
    """``app`` behind a real uvicorn server as `transferkit serve` runs it, on a free loopback port, in a thread;
    yields the port."""
    import threading

    import uvicorn

    from transferkit.serve import server_options

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           **server_options(app.state.settings)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        t0 = time.time()
        while not server.started and time.time() - t0 < 30:
            assert thread.is_alive(), "the server thread died"
            time.sleep(0.05)
        assert server.started, "the server did not start"
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def test_page_round_trip_in_a_browser(models, tmp_path):
    """A real browser (Playwright + Chromium) loads the page, gives the token, uploads an image, sees label bars."""
    playwright = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed: no browser test")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no system Chromium (chromium / chromium-browser) to drive")
    app = create_app(ServeSettings(models=[f"clf={models['clf']}"], token="tok"))
    with _served(app) as port:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium)
            page = browser.new_page()
            seen: list[str] = []
            page.on("request", lambda req: seen.append(req.url))
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector(".err")  # no token yet: the page says so
            assert "token" in page.locator(".err").inner_text().lower()
            page.fill("#token", "tok")
            page.dispatch_event("#token", "change")
            page.wait_for_selector("#model option", state="attached")
            tmp = tmp_path / "red.png"
            tmp.write_bytes(png())
            page.set_input_files("#file", str(tmp))
            page.wait_for_selector(".bar", timeout=20000)
            assert page.locator(".bar").count() == 3
            labels = page.locator(".bar .lab").all_inner_texts()
            assert sorted(labels) == sorted(CLASSES)
            page.goto(f"http://127.0.0.1:{port}/docs")  # the API docs render offline too
            page.wait_for_selector(".opblock", timeout=20000)
            assert page.locator(".opblock").count() >= 4
            browser.close()
        outside = [u for u in seen if not u.startswith((f"http://127.0.0.1:{port}/", "blob:", "data:"))]
        assert not outside, outside  # offline: nothing but this server


# --------------------------------------------------------------------------- safety


def test_bad_uploads_are_400_with_one_sentence(client):
    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, format="JPEG")
    cases = {"not an image": b"hello, I am text", "truncated": buf.getvalue()[:200], "empty upload": b""}
    for reason, data in cases.items():
        r = client.post("/models/clf/predict", files={"file": ("x.jpg", data)})
        assert r.status_code == 400 and reason in r.json()["detail"] and "\n" not in r.json()["detail"], r.text
    assert client.post("/models/clf/predict", json={"image": "%%%"}).status_code == 400
    assert client.post("/models/clf/predict", content=b"{", headers={"content-type": "application/json"}).status_code == 400
    assert client.post("/models/clf/predict", content=b"x", headers={"content-type": "text/plain"}).status_code == 415
    assert client.post("/models/clf/predict", files={"other": ("x.png", png())}).status_code == 400
    r = client.post("/models/clf/predict", files={"file": ("strip.png", png(size=(1, 20000)))})
    assert r.status_code == 400 and "elongated" in r.json()["detail"]  # its resize would need gigapixels
    # odd modes decode as in predict
    for mode, colour in (("RGBA", (255, 0, 0, 0)), ("L", 90), ("P", 3), ("I;16", 4000), ("CMYK", (0, 255, 255, 0))):
        buf = io.BytesIO()
        Image.new(mode, (20, 20), colour).save(buf, format="TIFF" if mode == "CMYK" else "PNG")
        assert client.post("/models/clf/predict", files={"file": ("m", buf.getvalue())}).status_code == 200, mode


def test_decompression_bomb_is_400(models, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with _client(models) as c:
        r = c.post("/models/clf/predict", files={"file": ("bomb.png", png(size=(40, 40)))})  # 1,600 px > 1,000
    assert r.status_code == 400 and "decompression-bomb" in r.json()["detail"]


def test_oversized_upload_is_413(models):
    with _client(models, max_upload_mb=0.05) as c:  # 52 kB
        big = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(big).save(buf, format="PNG")
        assert len(buf.getvalue()) > 0.05 * 1024 * 1024
        r = c.post("/models/clf/predict", files={"file": ("big.png", buf.getvalue())})
        assert r.status_code == 413 and "upload limit" in r.json()["detail"]

        def chunks():  # no Content-Length: counted as it arrives
            for _ in range(20):
                yield b"x" * 8192

        r = c.post("/models/clf/predict", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413


def test_token_is_required_when_set(models):
    with _client(models, token="s3cret") as c:
        assert c.get("/health").status_code == 200 and c.get("/").status_code == 200
        assert c.get("/models").status_code == 401
        assert c.post("/models/clf/predict", files={"file": ("a.png", png())}).status_code == 401
        assert c.get("/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        assert c.get("/models", headers=ok).status_code == 200
        assert c.post("/models/clf/predict", files={"file": ("a.png", png())}, headers=ok).status_code == 200


def test_no_request_reaches_the_filesystem(client, tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(png())
    for url in (f"/models/{secret}/predict", "/models/..%2F..%2Fetc%2Fpasswd/predict", "/models/../clf/predict",
                f"/models/{secret.parent}%2Fsecret.png/predict"):
        assert client.post(url, files={"file": ("a.png", png())}).status_code in (404, 405), url
    r = client.post("/models/clf/predict", json={"path": str(secret)})
    assert r.status_code == 400 and "unexpected: path" in r.json()["detail"]
    r = client.post("/models/clf/predict", files={"file": (str(secret), b"not an image")})
    assert r.status_code == 400  # the file name is only a name: its bytes are what is read
    assert client.get(f"/{secret}").status_code == 404 and client.get("/page.html").status_code == 404


def test_a_model_that_does_not_answer_in_time_gives_503():
    from transferkit.serve.handlers import Handler, ServeOptions

    class Slow(Handler):
        kind = "text"

        def prepare(self, inp):
            return inp.text

        def run(self, items):
            time.sleep(1.0)
            return [{"source": t} for t in items]

    slow = Slow("slow", Path("."), {"task": "test"}, ServeOptions())
    with TestClient(create_app(ServeSettings(timeout_s=0.2), handlers={"slow": slow})) as c:
        r = c.post("/models/slow/predict", json={"text": "hi"})
        assert r.status_code == 503 and "did not answer" in r.json()["detail"]


def test_a_dribbled_body_gets_408_within_the_timeout_and_others_are_served(models):
    """Slowloris: headers, then the body one byte at a time, each byte well inside the timeout. The whole body has
    --timeout seconds: the server answers 408 and closes that connection, and serves other clients meanwhile."""
    import httpx
    import select

    timeout = 1.0
    app = create_app(ServeSettings(models=[f"clf={models['clf']}"], timeout_s=timeout, max_batch=1))
    with _served(app) as port:
        url = f"http://127.0.0.1:{port}"
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            sock.sendall(b"POST /models/clf/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"image\": \"")
            t0 = time.perf_counter()
            answer, others, sent, answered_at, closed = b"", [], 0, None, False
            while time.perf_counter() - t0 < 10 * timeout:
                if select.select([sock], [], [], 0.1)[0]:  # the server spoke (or closed)
                    try:
                        chunk = sock.recv(4096)
                    except ConnectionResetError:  # a byte crossed the server's close
                        chunk = b""
                    answered_at = answered_at or time.perf_counter()
                    if not chunk:
                        closed = True
                        break
                    answer += chunk
                    continue
                if answer:
                    continue
                try:
                    sock.sendall(b"A")  # one byte per 0.1 s: never quiet for the timeout, never done either
                    sent += 1
                except OSError:
                    break
                if sent in (3, 6):  # while the dribbler holds its connection, another client is served
                    with httpx.Client(base_url=url, timeout=5) as c:
                        others.append(c.get("/health").status_code)
                        others.append(c.post("/models/clf/predict", files={"file": ("a.png", png())}).status_code)
        finally:
            sock.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"did not arrive within 1 s" in answer and closed  # and that connection is closed
        assert answered_at - t0 < timeout + 1.5, answered_at - t0  # the documented limit, plus slack for a busy machine
        assert sent >= 5  # it did dribble past several would-be per-byte timeouts
        assert others == [200, 200, 200, 200]
        with httpx.Client(base_url=url, timeout=5) as c:  # and the server still serves afterwards
            assert c.post("/models/clf/predict", files={"file": ("a.png", png())}).status_code == 200


def test_dribbled_headers_get_the_connection_closed_within_the_timeout(models):
    """Slowloris on the headers: a new connection, and a kept-alive one after its first answer, each send header
    bytes one at a time. Each is closed within --timeout of its start (uvicorn alone would wait forever, and enough
    of them would hold every allowed connection), while other clients are served."""
    import select

    import httpx

    timeout = 1.0
    app = create_app(ServeSettings(models=[f"clf={models['clf']}"], timeout_s=timeout, max_batch=1))
    with _served(app) as port:
        url = f"http://127.0.0.1:{port}"
        fresh = socket.create_connection(("127.0.0.1", port), timeout=5)
        kept = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            kept.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            first = b""
            while b"\r\n\r\n" not in first or not first.rstrip().endswith(b"}"):
                first += kept.recv(4096)
            assert first.startswith(b"HTTP/1.1 200")  # a normal request on it first: the connection stays open
            t0 = time.perf_counter()
            open_socks = {fresh: t0, kept: t0}
            closed_after: dict[socket.socket, float] = {}
            for sock in open_socks:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            others, sent = [], 0
            while open_socks and time.perf_counter() - t0 < 10 * timeout:
                for sock in select.select(list(open_socks), [], [], 0.1)[0]:
                    try:
                        data = sock.recv(4096)
                    except ConnectionResetError:
                        data = b""
                    assert not data, data[:200]  # never an answer: its headers never end
                    closed_after[sock] = time.perf_counter() - open_socks.pop(sock)
                for sock in list(open_socks):
                    try:
                        sock.sendall(b"X")  # one more byte of a header line, every 0.1 s
                    except OSError:
                        closed_after[sock] = time.perf_counter() - open_socks.pop(sock)
                sent += 1
                if sent in (3, 6):
                    with httpx.Client(base_url=url, timeout=5) as c:
                        others.append(c.get("/health").status_code)
                        others.append(c.post("/models/clf/predict", files={"file": ("a.png", png())}).status_code)
        finally:
            fresh.close()
            kept.close()
        assert not open_socks, "a connection dribbling its headers was still open after 10 timeouts"
        assert all(t < timeout + 1.5 for t in closed_after.values()), closed_after
        assert sent >= 5 and others == [200, 200, 200, 200]
        with httpx.Client(base_url=url, timeout=5) as c:  # still serving, and a patient client is unaffected
            assert c.get("/health").status_code == 200
            time.sleep(timeout * 1.5)  # idle on keep-alive longer than the header deadline, then a request
            assert c.get("/health").status_code == 200


def test_bind_rules():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and not is_loopback("0.0.0.0")
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "tok")
    with pytest.raises(TransferkitError, match="without a token"):
        check_bind("0.0.0.0", None)


# --------------------------------------------------------------------------- the real server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(args, env=None):
    full = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([*transferkit_cmd(), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=full)


def _wait_up(proc, port, timeout=120):
    import httpx

    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stdout.read()}")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).json()
        except httpx.HTTPError:
            time.sleep(0.3)
    raise AssertionError("server did not come up")


def _stop(proc):
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_cli_refuses_public_host_without_token(models, cli):
    r = cli("serve", models["clf"], "--host", "0.0.0.0", timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "without a token" in r.stderr
    r = cli("serve", "/no/such/dir", timeout=60)
    assert r.returncode == 2 and "No such model directory" in r.stderr


def test_cli_serves_on_all_interfaces_with_token(models):
    import httpx

    port = _free_port()
    proc = _start_server(["serve", f"clf={models['clf']}", "--host", "0.0.0.0", "--port", str(port), "--max-batch", "4"],
                         env={"TRANSFERKIT_SERVE_TOKEN": "tok"})
    try:
        assert _wait_up(proc, port)["auth"] is True
        url = f"http://127.0.0.1:{port}"
        assert httpx.post(f"{url}/models/clf/predict", files={"file": ("a.png", png())}).status_code == 401
        r = httpx.post(f"{url}/models/clf/predict", files={"file": ("a.png", png())},
                       headers={"Authorization": "Bearer tok"}, timeout=30)
        assert r.status_code == 200 and r.json()[0]["top"][0]["label"] in CLASSES
        assert "access-control-allow-origin" not in r.headers  # CORS off
    finally:
        _stop(proc)


def _children(pid: int) -> set[int]:
    """Process ids of ``pid``'s direct children (Linux /proc)."""
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out |= {int(c) for c in (task / "children").read_text().split()}
        except OSError:
            pass
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts worker processes through Linux /proc")
def test_cli_serves_with_two_workers_and_stops_cleanly(models):
    """``--workers 2``: two server processes under a supervisor share the port and answer; SIGTERM stops them all
    (exit 0, no traceback, no worker left behind, the port closed)."""
    import httpx

    port = _free_port()
    proc = _start_server(["serve", f"clf={models['clf']}", "--port", str(port), "--workers", "2", "--max-batch", "4",
                          "--engine", "eager"])  # eager: no ONNX export in each process; the workers are the point
    workers: set[int] = set()
    try:
        assert _wait_up(proc, port)["models"] == 1
        t0 = time.time()
        while time.time() - t0 < 60:  # the supervisor's children that serve (multiprocessing may add a helper)
            workers = {c for c in _children(proc.pid) if _alive(c)}
            if len(workers) >= 2:
                break
            time.sleep(0.2)
        assert len(workers) >= 2, workers
        url = f"http://127.0.0.1:{port}"
        with ThreadPoolExecutor(4) as pool:
            rs = list(pool.map(lambda i: httpx.post(f"{url}/models/clf/predict", files={"file": (f"{i}.png", png())},
                                                    timeout=60), range(8)))
        assert [r.status_code for r in rs] == [200] * 8, [r.text for r in rs]
        assert all(r.json()[0]["top"][0]["label"] in CLASSES for r in rs)
        assert httpx.get(f"{url}/health", timeout=5).json()["status"] == "ok"
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            raise AssertionError(f"--workers 2 did not stop within 30 s of SIGTERM: {out[-2000:]}")
    assert proc.returncode == 0, out[-2000:]
    assert "Traceback" not in out, out[-3000:]
    t0 = time.time()
    while any(_alive(w) for w in workers) and time.time() - t0 < 10:
        time.sleep(0.1)
    assert not [w for w in workers if _alive(w)], "worker processes outlived the server"
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
