"""Shared core: typed configs (flags, YAML round trip), data readers and splits, the training engine, reports."""

from __future__ import annotations

import argparse
import gzip
import struct
import zipfile
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
import pytest
from PIL import Image

from transferkit.core import config as C
from transferkit.core import datasets as D
from transferkit.core.engine import TrainConfig, metrics_by_epoch, prepare_run_dir
from transferkit.errors import TransferkitError

# --------------------------------------------------------------------------- config


@dataclass
class _Cfg(TrainConfig):
    head_layers: tuple[int, ...] = C.doc("hidden sizes of the new head", (512, 256))
    strategy: Literal["features", "freeze"] = C.doc("how to train", "features")
    dropout: float = C.doc("dropout", 0.2)
    note: Optional[str] = C.doc("free text", None)
    augment: bool = C.doc("augment", True)


def _parse(argv):
    p = argparse.ArgumentParser()
    C.add_config_args(p, _Cfg)
    return p.parse_args(argv)


def test_flags_are_generated_and_typed():
    cfg = C.resolve(_Cfg, _parse(["--head-layers", "64,32", "--strategy", "freeze", "--no-augment", "--epochs", "3"]))
    assert cfg.head_layers == (64, 32) and cfg.strategy == "freeze" and cfg.augment is False and cfg.epochs == 3
    assert cfg.dropout == 0.2 and cfg.note is None  # untouched defaults
    with pytest.raises(SystemExit):
        _parse(["--strategy", "nope"])
    with pytest.raises(TransferkitError, match="--epochs must be int"):
        C.resolve(_Cfg, _parse(["--epochs", "many"]))


def test_yaml_round_trip_and_flag_priority(tmp_path):
    cfg = C.resolve(_Cfg, _parse(["--head-layers", "7", "--lr", "0.05", "--note", "hello"]))
    path = C.save(cfg, tmp_path / "config.yaml")
    assert "# head_layers: hidden sizes" in path.read_text()
    again = C.resolve(_Cfg, _parse(["--config", str(path)]))
    assert again == cfg
    override = C.resolve(_Cfg, _parse(["--config", str(path), "--lr", "0.1"]))
    assert override.lr == 0.1 and override.head_layers == (7,)
    (tmp_path / "bad.yaml").write_text("lr: 0.1\nwhat: 3\n")
    with pytest.raises(TransferkitError, match="unknown option"):
        C.resolve(_Cfg, _parse(["--config", str(tmp_path / "bad.yaml")]))
    (tmp_path / "bad2.yaml").write_text("lr: [1, 2\n")
    with pytest.raises(TransferkitError, match="not valid YAML"):
        C.resolve(_Cfg, _parse(["--config", str(tmp_path / "bad2.yaml")]))


# --------------------------------------------------------------------------- datasets


def test_class_folders_split_and_errors(tmp_path, colour_folders):
    split = D.load_labelled(colour_folders, val_fraction=0.25, seed=1)
    assert split.train.classes == ["blue", "green", "red"]
    assert len(split.train) + len(split.val) == 36
    assert sorted(split.val.counts().values()) == [3, 3, 3]  # stratified
    again = D.load_labelled(colour_folders, val_fraction=0.25, seed=1)
    assert again.val.paths == split.val.paths  # seeded
    assert set(split.split_files["train"]).isdisjoint(split.split_files["val"])
    one = tmp_path / "one"
    (one / "only").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(one / "only" / "a.png")
    Image.new("RGB", (4, 4)).save(one / "only" / "b.png")
    with pytest.raises(TransferkitError, match="single class"):
        D.load_labelled(one)
    (one / "rare").mkdir()
    Image.new("RGB", (4, 4)).save(one / "rare" / "a.png")
    with pytest.raises(TransferkitError, match=r"at least 2 images; too few in rare \(1\)"):
        D.load_labelled(one)
    (tmp_path / "none" / "x").mkdir(parents=True)
    with pytest.raises(TransferkitError, match="No images"):
        D.load_labelled(tmp_path / "none")


def test_train_val_layout_and_csv(tmp_path, colour_folders):
    from tests.conftest import make_class_folders

    root = tmp_path / "tv"
    make_class_folders(root / "train", n_per_class=4)
    make_class_folders(root / "val", n_per_class=2)
    split = D.load_labelled(root)
    assert len(split.train) == 12 and len(split.val) == 6 and split.how.startswith("given")
    csv = tmp_path / "labels.csv"
    rows = ["path,label"] + [f"{p},{p.parent.name}" for p in sorted(colour_folders.rglob("*.png"))]
    csv.write_text("\n".join(rows))
    split = D.load_labelled(csv, val_fraction=0.5)
    assert len(split.train) + len(split.val) == 36
    csv.write_text("a.png\n")
    with pytest.raises(TransferkitError, match="row 1"):
        D.load_labelled(csv)


def _idx(path, arr):
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_mnist_idx_and_digits(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 255, (5, 28, 28))
    _idx(tmp_path / "t10k-images-idx3-ubyte.gz", imgs)
    _idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(5))
    data = D.load_arrays(tmp_path)
    assert data.images.shape == (5, 28, 28) and data.labels.tolist() == [0, 1, 2, 3, 4]
    assert (data.images == imgs).all()
    raw = gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz").read()
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(raw[:-10])
    with pytest.raises(TransferkitError, match="truncated"):
        D.load_arrays(tmp_path)
    digits = D.load_arrays("digits")
    assert digits.images.shape == (1797, 8, 8) and digits.images.max() == 255 and len(set(digits.labels)) == 10


def test_omniglot_from_zip_and_folder(tmp_path):
    z = tmp_path / "images_background_tiny.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for a in ("Alpha", "Beta"):
            for c in ("character01", "character02"):
                for k in range(3):
                    import io

                    buf = io.BytesIO()
                    Image.new("1", (105, 105), 1).save(buf, format="PNG")
                    zf.writestr(f"images_background_tiny/{a}/{c}/{k:02d}.png", buf.getvalue())
    om = D.load_omniglot(z)
    assert om.images.shape == (12, 105, 105) and len(om.classes) == 4
    assert om.classes[0] == "Alpha/character01" and om.alphabets == ["Alpha", "Alpha", "Beta", "Beta"]
    zipfile.ZipFile(z).extractall(tmp_path / "unzipped")
    folder = D.load_omniglot(tmp_path / "unzipped", size=52)
    assert folder.images.shape == (12, 52, 52) and folder.classes == om.classes


def test_sentence_pairs_skip_and_count(tmp_path):
    f = tmp_path / "pairs.tsv"
    f.write_text("Go.\tVa !\textra\n\nno tab here\n\tempty source\nHi.\tSalut !\n" + "x" * 300 + "\ty\n", encoding="utf-8")
    pairs = D.read_pairs(f, max_chars=100)
    assert pairs.pairs == [("Go.", "Va !"), ("Hi.", "Salut !")]
    assert pairs.skipped == {"empty_lines": 1, "lines_without_tab": 1, "empty_sides": 1, "over_long_pairs": 1}
    assert "1 lines without tab" in pairs.summary()
    f.write_text("only\nbad lines\n")
    with pytest.raises(TransferkitError, match="no usable"):
        D.read_pairs(f)


# --------------------------------------------------------------------------- engine and report


def test_run_dir_is_never_silently_reused(tmp_path):
    run = prepare_run_dir(tmp_path / "run", resume=False)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"good")
    with pytest.raises(TransferkitError, match="--resume"):
        prepare_run_dir(run, resume=False)
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == b"good"
    assert prepare_run_dir(run, resume=True) == run
    with pytest.raises(TransferkitError, match="Nothing to resume"):
        prepare_run_dir(tmp_path / "fresh", resume=True)


def test_lightning_engine_trains_checkpoints_and_resumes(tmp_path):
    import lightning.pytorch as pl
    import torch

    from transferkit.core import engine

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 2)

        def training_step(self, batch, _):
            x, y = batch
            loss = torch.nn.functional.cross_entropy(self.lin(x), y)
            self.log("train_loss", loss, on_epoch=True, on_step=False)
            return loss

        def validation_step(self, batch, _):
            x, y = batch
            self.log("val_loss", torch.nn.functional.cross_entropy(self.lin(x), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.5)

    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    ds = torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long())
    run = prepare_run_dir(tmp_path / "run", resume=False)

    def train(epochs, resume):
        engine.seed_everything(0)
        module = Tiny()
        trainer = engine.make_trainer(TrainConfig(epochs=epochs), run)
        engine.fit(trainer, module, engine.make_loader(ds, 16, True), engine.make_loader(ds, 16, False), run, resume)
        return trainer, module

    trainer, _ = train(2, False)
    assert trainer.current_epoch == 2 and (run / "checkpoints" / "last.ckpt").is_file()
    trainer, module = train(4, True)  # continues from epoch 2
    assert trainer.current_epoch == 4
    assert engine.restore_best(trainer, module).endswith("best.ckpt")
    m = metrics_by_epoch(run)
    assert [e for e, _ in m["val_loss"]] == [0, 1, 2, 3] and "epoch_time" in m
    assert m["val_loss"][-1][1] < m["val_loss"][0][1]


def test_metrics_csv_survives_a_crash_while_its_header_grows(tmp_path, monkeypatch):
    # A new metric makes the CSV writer rewrite the whole file with a wider header. A run killed
    # during that rewrite must keep the rows it had (Lightning's writer truncates first, then writes).
    import csv

    from transferkit.core import engine

    log = engine.csv_logger(tmp_path)
    log.log_metrics({"val_acc": 0.5, "epoch": 0}, step=0)
    log.save()
    before = (tmp_path / "metrics.csv").read_text()
    assert "val_acc" in before

    def killed(*a, **k):
        raise KeyboardInterrupt("killed mid-rewrite")

    monkeypatch.setattr(csv.DictWriter, "writerows", killed)
    log.log_metrics({"train_loss_step": 1.0, "epoch": 1}, step=9)
    with pytest.raises(KeyboardInterrupt):
        log.save()
    assert (tmp_path / "metrics.csv").read_text() == before
    monkeypatch.undo()
    log = engine.csv_logger(tmp_path)  # the run resumed: the file continues, with the wider header
    log.log_metrics({"train_loss_step": 1.0, "epoch": 1}, step=9)
    log.save()
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["val_acc"] for r in rows] == ["0.5", ""] and rows[1]["train_loss_step"] == "1.0"


def test_report_is_self_contained(tmp_path):
    from transferkit.core.report import Report, confusion_figure, image_grid, plot_curves

    rep = Report(tmp_path, "Test <run>")
    rep.figure(plot_curves({"loss": [(0, 1.0), (1, 0.5)]}, ["loss", "missing"]), "curves.png", "Loss")
    rep.figure(image_grid([np.zeros((8, 8)), np.ones((8, 8, 3), dtype=np.uint8) * 255], ["a", "b"]), "grid.png")
    rep.figure(confusion_figure([[3, 1], [0, 4]], ["x", "y"]), "cm.png")
    rep.table(["k", "v"], [["acc", 0.91234]])
    rep.config({"lr": 0.1})
    page = rep.write().read_text()
    assert "Test &lt;run&gt;" in page and page.count("data:image/png;base64,") == 3
    for name in ("curves.png", "grid.png", "cm.png"):
        assert (tmp_path / name).is_file() and f"data-file='{name}'" in page
    assert "0.9123" in page


def test_require_names_the_first_bad_flag_and_skips_unset_ones():
    from dataclasses import dataclass
    from typing import Optional

    from transferkit.core.config import require

    @dataclass
    class Cfg:
        epochs: int = 3
        batch_size: int = 0
        threads: Optional[int] = None

    cfg = Cfg()
    require(cfg, "threads", lambda v: v >= 1, "be at least 1")  # unset: nothing to check
    require(cfg, "epochs", lambda v: v >= 1, "be at least 1")
    with pytest.raises(TransferkitError, match=r"^--batch-size must be at least 1\.$"):
        require(cfg, ("epochs", "batch_size", "threads"), lambda v: v >= 1, "be at least 1")
    with pytest.raises(TransferkitError, match=r"^--batch-size must be positive \(got 0\)\.$"):
        require(cfg, "batch_size", lambda v: v > 0, "be positive", got=True)
