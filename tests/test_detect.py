"""Object detection: readers, boxes under augmentation, IoU/NMS/mAP against references, training, predict, CLI."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from detect_data import COLOURS, make_boxes, write_coco, write_voc, write_yolo  # noqa: E402

from transferkit.errors import TransferkitError  # noqa: E402
from transferkit.tasks.detect.data import DetDataset, read_dataset, train_transform  # noqa: E402

TINY = dict(backbone="test_efficientnet", weights="none", image_size=64, batch_size=8, precision="32", seed=0,
            backbone_lr=1.0, lr=3e-3)


def _sorted(ds):
    return {r.path.name: (r.boxes, r.labels) for r in ds.records}


def test_three_formats_read_the_same_boxes(tmp_path):
    items = make_boxes(8, 48, seed=1, negatives=2)
    voc = read_dataset(write_voc(tmp_path / "voc", items))
    yolo = read_dataset(write_yolo(tmp_path / "yolo", items))
    coco = read_dataset(write_coco(tmp_path / "coco", items))
    coco2 = read_dataset(tmp_path / "coco" / "images", annotations=tmp_path / "coco" / "annotations.json")
    assert voc.format == "Pascal VOC" and yolo.format == "YOLO txt" and coco.format == "COCO JSON"
    for ds in (voc, yolo, coco, coco2):
        assert ds.class_names == list(COLOURS)
        assert len(ds.records) == 8 and sum(len(r.boxes) == 0 for r in ds.records) == 2
    a = _sorted(voc)
    for other in (yolo, coco, coco2):
        b = _sorted(other)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.allclose(a[k][0], b[k][0], atol=1e-3), k
            assert torch.equal(a[k][1], b[k][1])
    # the generated truth itself
    name, _, objs = items[0]
    boxes, labels = a[f"{name}.png"]
    assert boxes.tolist() == [[float(v) for v in o[:4]] for o in objs]
    assert labels.tolist() == [list(COLOURS).index(o[4]) for o in objs]


def test_degenerate_boxes_dropped_grey_and_palette_images(tmp_path):
    from PIL import Image

    items = make_boxes(4, 48, seed=2, negatives=0)
    extra = {items[0][0]: [(10, 10, 10, 30, "red"), (60, 60, 90, 90, "blue"), (-5, -5, 20, 20, "red")]}
    root = write_voc(tmp_path / "voc", items, extra)
    Image.open(root / "images" / f"{items[1][0]}.png").convert("L").save(root / "images" / f"{items[1][0]}.png")
    Image.open(root / "images" / f"{items[2][0]}.png").convert("P").save(root / "images" / f"{items[2][0]}.png")
    ds = read_dataset(root)
    assert ds.dropped_boxes == 2  # zero width, and wholly outside the 48x48 image
    rec = next(r for r in ds.records if r.path.stem == items[0][0])
    assert rec.boxes[-1].tolist() == [0.0, 0.0, 20.0, 20.0]  # partly outside: clipped, kept
    assert torch.isfinite(torch.cat([r.boxes for r in ds.records])).all()
    from transferkit.tasks.detect.data import load_resized

    keep, imgs, _ = load_resized(ds.records, 32)
    assert len(keep) == 4 and imgs.shape == (4, 3, 32, 32) and imgs.dtype == torch.uint8


def test_bad_files_are_named(tmp_path, capsys):
    items = make_boxes(4, 32, seed=3, negatives=0)
    root = write_voc(tmp_path / "voc", items)
    (root / "annotations" / "broken.xml").write_text("<annotation><object>")
    (root / "images" / f"{items[1][0]}.png").write_bytes(b"not a png")
    ds = read_dataset(root)
    err = capsys.readouterr().err
    assert "broken.xml" in err and f"{items[1][0]}.png" in err
    assert len(ds.records) == 3 and len(ds.bad_files) == 2
    yroot = write_yolo(tmp_path / "yolo", items)
    (yroot / "labels" / f"{items[0][0]}.txt").write_text("0 0.5 0.5 nan-ish\n")
    ds = read_dataset(yroot)
    assert f"{items[0][0]}.txt" in capsys.readouterr().err and len(ds.records) == 3
    with pytest.raises(TransferkitError, match="not a detection data set"):
        read_dataset(tmp_path)


def test_flip_and_zoom_move_boxes_with_the_pixels():
    from torchvision.transforms import v2

    img = torch.zeros(3, 32, 32, dtype=torch.uint8)
    img[0, 4:12, 2:10] = 255  # a red square at x 2..10, y 4..12
    boxes = [torch.tensor([[2.0, 4.0, 10.0, 12.0]])]
    ds = DetDataset(img[None], boxes, [torch.tensor([0])], v2.Compose([v2.RandomHorizontalFlip(1.0)]))
    x, t = ds[0]
    assert t["boxes"].tolist() == [[22.0, 4.0, 30.0, 12.0]]
    assert x[0, 4:12, 22:30].min() == 1.0 and x[0].sum() == 64
    torch.manual_seed(0)
    ds = DetDataset(img[None], boxes, [torch.tensor([0])], train_transform(32, flip=True, scale_jitter=0.3, color_jitter=0))
    for _ in range(5):
        x, t = ds[0]
        ys, xs = torch.nonzero(x[0] > 0.5, as_tuple=True)
        if len(t["boxes"]):
            b = t["boxes"][0]
            assert abs(float(xs.min()) - float(b[0])) <= 1.5 and abs(float(xs.max()) + 1 - float(b[2])) <= 1.5
            assert abs(float(ys.min()) - float(b[1])) <= 1.5 and abs(float(ys.max()) + 1 - float(b[3])) <= 1.5


def test_iou_and_nms_against_torchvision_and_by_hand():
    from torchvision.ops import box_iou, nms

    from transferkit.tasks.detect.model import box_iou_pairs

    a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 4.0, 4.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 2.0, 2.0]])
    by_hand = torch.tensor([50 / 150, 0.0, 4 / 16])
    assert torch.allclose(box_iou_pairs(a, b), by_hand)
    assert torch.allclose(torch.diagonal(box_iou(a, b)), by_hand)
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [5.0, 0.0, 15.0, 10.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    # IoU(0,1) = 90/110 = 0.82 > 0.5: 1 suppressed; IoU(0,2) = 1/3 < 0.5: kept
    assert nms(boxes, scores, 0.5).tolist() == [0, 2]


def test_map_agrees_with_pycocotools():
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from transferkit.tasks.detect.metrics import evaluate_detections

    truths = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 50.0], [60.0, 60.0, 90.0, 95.0]]), "labels": torch.tensor([0, 1])},
              {"boxes": torch.tensor([[5.0, 5.0, 40.0, 30.0]]), "labels": torch.tensor([0])}]
    preds = [{"boxes": torch.tensor([[12.0, 8.0, 52.0, 48.0], [58.0, 62.0, 92.0, 90.0], [0.0, 0.0, 20.0, 20.0]]),
              "scores": torch.tensor([0.9, 0.6, 0.8]), "labels": torch.tensor([0, 1, 0])},
             {"boxes": torch.tensor([[6.0, 4.0, 30.0, 30.0]]), "scores": torch.tensor([0.7]), "labels": torch.tensor([0])}]
    res = evaluate_detections(preds, truths, ["a", "b"])
    gt = {"images": [{"id": i, "width": 100, "height": 100} for i in range(2)],
          "categories": [{"id": 0, "name": "a"}, {"id": 1, "name": "b"}], "annotations": []}
    dets = []
    for i, (t, p) in enumerate(zip(truths, preds)):
        for b, l in zip(t["boxes"].tolist(), t["labels"].tolist()):
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i, "category_id": l, "iscrowd": 0,
                                      "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": (b[2] - b[0]) * (b[3] - b[1])})
        for b, s, l in zip(p["boxes"].tolist(), p["scores"].tolist(), p["labels"].tolist()):
            dets.append({"image_id": i, "category_id": l, "score": s, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]})
    coco = COCO()
    coco.dataset = gt
    coco.createIndex()
    ev = COCOeval(coco, coco.loadRes(dets), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert math.isclose(res["map"], ev.stats[0], abs_tol=1e-6)
    assert math.isclose(res["map50"], ev.stats[1], abs_tol=1e-6)
    assert 0 < res["map"] < res["map50"] <= 1
    assert res["n_images"] == 2 and set(res["per_class"]) == {"a", "b"}


def test_every_true_box_gets_a_cell():
    from transferkit.tasks.detect.model import YoloDetector, assign

    net = YoloDetector("test_efficientnet", 2, (0.5,) * 3, (0.25,) * 3)
    pts, strides = net.points(256)
    assert pts.shape == (32 * 32 + 16 * 16 + 8 * 8, 2)
    gt = torch.tensor([[1.0, 1.0, 5.0, 5.0], [0.0, 0.0, 256.0, 256.0], [20.0, 20.0, 40.0, 44.0], [21.0, 21.0, 39.0, 43.0]])
    a = assign(pts, strides, gt)
    assert set(a[a >= 0].tolist()) == {0, 1, 2, 3}
    assert (strides[a == 1] == 32).all()  # the whole-image box lives on the coarsest level
    assert (strides[a == 2] == 8).all()  # a small one on the finest


def test_predict_maps_boxes_to_the_original_image(tmp_path):
    from PIL import Image

    from transferkit.core.modeldir import TransferModel
    from transferkit.tasks.detect.train import predict

    class Fixed(torch.nn.Module):  # one box at (8, 4)-(24, 20) of the 32x32 network input
        def forward(self, x):
            return x

        def detect(self, out, size, **kw):
            return [{"boxes": torch.tensor([[8.0, 4.0, 24.0, 20.0]]), "scores": torch.tensor([0.9]),
                     "labels": torch.tensor([1])} for _ in range(len(out))]

    Image.new("RGB", (128, 64)).save(tmp_path / "wide.png")
    model = TransferModel(Fixed(), {"task": "detect", "class_names": ["a", "b"],
                                    "detect": {"method": "yolo", "image_size": 32}})
    (r,) = predict(model, [str(tmp_path / "wide.png")])
    assert r["width"] == 128 and r["height"] == 64
    assert r["boxes"] == [{"label": "b", "score": 0.9, "xyxy": [32.0, 8.0, 96.0, 40.0]}]


@pytest.fixture(scope="module")
def yolo_run(tmp_path_factory):
    from transferkit.tasks.detect import DetectConfig, fit

    root = tmp_path_factory.mktemp("det")
    write_voc(root / "voc", make_boxes(24, 64, seed=0, negatives=2))
    run = fit(DetectConfig(epochs=4, val_fraction=0.25, **TINY), root / "voc", root / "run")
    return root, run


def test_fit_lowers_the_loss_and_writes_the_run(yolo_run):
    from transferkit.core.engine import metrics_by_epoch

    root, run = yolo_run
    for f in ("config.yaml", "split.json", "metrics.csv", "metrics.json", "report.html", "model/config.json",
              "model/model.safetensors", "val_boxes.png", "pr_curves.png", "confusion.png", "labels.png"):
        assert (run / f).is_file(), f
    loss = [v for _, v in metrics_by_epoch(run)["train_loss"]]
    assert len(loss) == 4 and loss[-1] < 0.8 * loss[0]
    res = json.loads((run / "metrics.json").read_text())
    assert res["n_images"] == 6 and 0.0 <= res["map50"] <= 1.0 and set(res["per_class"]) <= {"red", "blue"}
    assert "val_boxes.png" in (run / "report.html").read_text()
    assert "freeze_stages: 0" in (run / "config.yaml").read_text()  # the resolved default (weights none), not null


def test_saved_detector_reloads_in_a_fresh_process(yolo_run, cli, capsys):
    from transferkit.tasks.detect import evaluate, predict

    root, run = yolo_run
    imgs = sorted((root / "voc" / "images").glob("*.png"))[:3]
    here = predict(run, [str(p) for p in imgs], conf=0.01)
    proc = cli("detect", "predict", run, *imgs, "--conf", "0.01", "--json", check=True)
    there = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["path"] for r in there] == [str(p) for p in imgs]
    for a, b in zip(here, there):
        assert len(a["boxes"]) == len(b["boxes"]) > 0
        for x, y in zip(a["boxes"], b["boxes"]):
            assert x["label"] == y["label"] and abs(x["score"] - y["score"]) < 1e-3
            assert np.allclose(x["xyxy"], y["xyxy"], atol=0.2)
    res = evaluate(run, root / "voc")
    assert res["split"] == "held-out" and res["n_images"] == 6
    from transferkit.cli.main import main

    assert main(["detect", "eval", str(run), str(root / "voc"), "--json"]) == 0
    keys = json.loads(capsys.readouterr().out)
    assert {"map50", "map", "per_class", "precision", "recall", "mean_iou", "n_images"} <= set(keys)


def test_detector_exports_to_onnx(yolo_run):
    from transferkit.api import export

    _, run = yolo_run
    res = export(run)
    assert Path(res["path"]).is_file() and res["max_abs_diff"] < 1e-3


def test_localize_trains_a_few_steps(tmp_path, capsys):
    from transferkit.core.engine import metrics_by_epoch
    from transferkit.tasks.detect import DetectConfig, fit, predict

    write_voc(tmp_path / "voc", make_boxes(16, 64, seed=4, negatives=2))
    cfg = DetectConfig(method="localize", epochs=8, val_fraction=0.25, **{**TINY, "batch_size": 4, "lr": 1e-2})
    run = fit(cfg, tmp_path / "voc", tmp_path / "run")
    assert "it learns the largest box" in capsys.readouterr().err
    loss = [v for _, v in metrics_by_epoch(run)["train_loss"]]
    assert min(loss[-2:]) < 0.85 * loss[0]
    out = predict(run, [str(tmp_path / "voc" / "images")], conf=0.0)
    assert len(out) == 16 and all(len(r["boxes"]) == 1 for r in out)


def test_cli_bad_input_is_one_sentence(tmp_path, cli, capsys):
    from transferkit.cli.main import main

    proc = cli("detect", "fit", tmp_path / "missing", "--out", tmp_path / "run")
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error:") and len(proc.stderr.strip().splitlines()) == 1
    (tmp_path / "empty").mkdir()
    for args, words in ((["fit", tmp_path / "empty", "--out", tmp_path / "run", "--image-size", "50"], "multiple of 32"),
                        (["fit", tmp_path / "empty", "--out", tmp_path / "run"], "not a detection data set"),
                        (["predict", tmp_path / "empty", tmp_path / "x.png"], "not a transferkit model directory")):
        assert main(["detect", *map(str, args)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and words in err and len(err.splitlines()) == 1


def test_rcnn_finds_the_rectangles_and_caches_its_crops(tmp_path, monkeypatch):
    from transferkit.tasks.detect import DetectConfig, fit, predict
    from transferkit.tasks.detect.rcnn import apply_regression, regression_targets, selective_search

    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "cache"))
    p = torch.tensor([[10.0, 10.0, 30.0, 50.0]])
    g = torch.tensor([[12.0, 8.0, 36.0, 44.0]])
    assert torch.allclose(apply_regression(p, regression_targets(p, g)), g, atol=1e-4)
    items = make_boxes(12, 64, seed=4, negatives=2)
    write_voc(tmp_path / "voc", items)
    from PIL import Image

    props = selective_search(Image.open(tmp_path / "voc" / "images" / f"{items[0][0]}.png").convert("RGB"), 50)
    assert props.shape[1] == 4 and 1 < len(props) <= 51
    cfg = DetectConfig(method="rcnn", backbone="test_efficientnet", weights="none", image_size=64, proposals=30,
                       crop_size=32, negatives=8, val_fraction=0.34, seed=0)
    run = fit(cfg, tmp_path / "voc", tmp_path / "run")
    res = json.loads((run / "metrics.json").read_text())
    assert res["map50"] > 0.5 and res["crops_computed"] > 0  # chance is near 0: boxes must be placed and named
    again = fit(cfg, tmp_path / "voc", tmp_path / "run2")
    assert json.loads((again / "metrics.json").read_text())["crops_cached"] == res["crops_computed"]
    (r,) = predict(run, [str(tmp_path / "voc" / "images" / f"{items[0][0]}.png")], conf=0.5)
    assert r["boxes"] and r["boxes"][0]["label"] in COLOURS


# --------------------------------------------------------------------------- issue 16: resume, and finding objects


def _squares(root: Path, n: int = 32, size: int = 64, seed: int = 0) -> Path:
    """One bright square per image (side 14..26 px) on a dark noisy background, one class, as Pascal VOC."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        img = rng.normal(30, 10, (size, size, 3))
        side = int(rng.integers(14, 27))
        x1, y1 = (int(v) for v in rng.integers(0, size - side, 2))
        img[y1:y1 + side, x1:x1 + side] = 230
        items.append((f"sq_{i:03d}", np.clip(img, 0, 255).astype(np.uint8), [(x1, y1, x1 + side, y1 + side, "square")]))
    return write_voc(root, items)


SQUARES = dict(TINY, batch_size=8, lr=5e-3)


def test_fit_resume_continues_an_interrupted_run(tmp_path):
    """`detect fit --resume` after the run was killed (-9) mid-training: it continues from the last checkpoint with
    the run's own config.yaml (no other flag), logs every epoch, and ends with the weights of a run never cut."""
    import os
    import signal

    from safetensors.torch import load_file

    from tests.conftest import kill_at_first_checkpoint
    from transferkit.cli.main import main
    from transferkit.tasks.detect import DetectConfig, fit

    data = _squares(tmp_path / "sq", n=16)
    run, epochs = tmp_path / "run", 6
    flags = {**SQUARES, "epochs": epochs, "val_fraction": 0.25}
    args = ["detect", "fit", str(data), "--out", str(run)]
    for key, value in flags.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, "TRANSFERKIT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    proc = kill_at_first_checkpoint(args, env, run, timeout=120)
    last = run / "checkpoints" / "last.ckpt"
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert not (run / "model").exists()  # it really was cut short
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] < epochs - 1

    assert main(["detect", "fit", str(data), "--out", str(run), "--resume"]) == 0
    import csv

    with (run / "metrics.csv").open(newline="") as f:
        logged = {int(float(row["epoch"])) for row in csv.DictReader(f) if row.get("val_map50")}
    assert logged == set(range(epochs))
    resumed = load_file(run / "model" / "model.safetensors")

    straight = load_file(fit(DetectConfig(**flags), data, tmp_path / "straight") / "model" / "model.safetensors")
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[k], straight[k]) for k in resumed), "resuming changed the final weights"


def test_yolo_finds_bright_squares_far_above_an_untrained_net(tmp_path):
    """20 short epochs on 24 tiny images put boxes on the squares of 32 images never seen (mAP@0.5, mean IoU,
    recall); the same network untrained, evaluated by the same code on the same images, scores near 0."""
    from transferkit.core.modeldir import build_module, read_config, save_model_dir
    from transferkit.tasks.detect import DetectConfig, evaluate, fit

    cfg = DetectConfig(**{**SQUARES, "epochs": 20, "batch_size": 4, "scale_jitter": 0.0, "color_jitter": 0.0,
                          "val_fraction": 0.25})
    run = fit(cfg, _squares(tmp_path / "train", n=32, seed=0), tmp_path / "run")
    unseen = _squares(tmp_path / "unseen", n=32, seed=1)
    res = evaluate(run, unseen)
    assert res["split"] == "all" and res["n_images"] == 32

    config = read_config(run / "model")
    torch.manual_seed(0)
    untrained = save_model_dir(build_module(config), config, tmp_path / "untrained")
    base = evaluate(untrained, unseen)
    # measured here: trained 0.51 mAP@0.5, mean IoU 0.70, recall 0.66; untrained 0.016 on a held-out split
    assert base["map50"] < 0.1 and res["map50"] > 0.25, (base["map50"], res["map50"])
    assert res["mean_iou"] > 0.55 and res["recall"] > 0.45, res


def test_freeze_stages_keeps_the_early_backbone_out_of_the_gradient_and_the_optimiser():
    from transferkit.tasks.detect import DetectConfig
    from transferkit.tasks.detect.module import DetectModule
    from transferkit.tasks.detect.train import _net_for

    cfg = DetectConfig(**{**TINY, "freeze_stages": 2})
    net = _net_for(cfg, 3)[0]
    info = net.body.feature_info.info
    frozen = {n for n, p in net.body.named_parameters() if not p.requires_grad}
    stem = [n for n, _ in net.body.named_parameters() if not n.startswith("blocks.")]
    assert frozen and set(stem) <= frozen  # the stem ...
    stage2 = info[1]["module"]  # ... and everything up to the end of stage 2 (stride 4)
    assert all(n.startswith(("blocks.0.", stage2 + ".")) or n in stem for n in frozen)
    assert any(n.startswith(stage2 + ".") for n in frozen)
    assert not any(n.startswith(info[2]["module"] + ".") for n in frozen)
    x = torch.rand(2, 3, 64, 64)
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 30.0, 40.0]]), "labels": torch.tensor([1])}] * 2
    net.loss(net(x), targets, 64)["loss"].backward()
    for n, p in net.body.named_parameters():
        assert (p.grad is None) == (n in frozen), n
    opt = DetectModule(net, cfg, total_steps=10).configure_optimizers()["optimizer"]
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not any(id(p) in in_opt for n, p in net.body.named_parameters() if n in frozen)
    with pytest.raises(TransferkitError, match="feature stages"):
        _net_for(DetectConfig(**{**TINY, "freeze_stages": 9}), 3)


def test_freeze_stages_past_the_backbone_fails_before_the_run_folder_is_written(tmp_path):
    from transferkit.tasks.detect import DetectConfig
    from transferkit.tasks.detect.train import fit

    data = write_voc(tmp_path / "voc", make_boxes(4, 32, seed=3, negatives=0))
    with pytest.raises(TransferkitError, match="feature stages"):
        fit(DetectConfig(**{**TINY, "freeze_stages": 9, "epochs": 1}), data, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_freeze_stages_default_is_three_over_trained_weights_and_zero_over_random_ones():
    from transferkit.tasks.detect import DetectConfig

    assert DetectConfig().freeze_stages is None and DetectConfig().stages_to_freeze() == 3  # yolo, pretrained
    assert DetectConfig(weights="w.safetensors").stages_to_freeze() == 3
    assert DetectConfig(weights="none").stages_to_freeze() == 0  # random filters are worth training
    assert DetectConfig(method="localize").stages_to_freeze() == 0
    assert DetectConfig(weights="none", freeze_stages=2).stages_to_freeze() == 2  # an explicit value wins
    assert DetectConfig(freeze_stages=0).stages_to_freeze() == 0
