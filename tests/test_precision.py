"""Training precision: what ``auto`` means, the environment override, and a real bf16 fit on any CPU."""

from __future__ import annotations

import math

import pytest
import torch

from transferkit.core import engine
from transferkit.errors import TransferkitError


def test_explicit_precision_wins_and_auto_follows_the_measurement(monkeypatch):
    monkeypatch.delenv(engine.PRECISION_ENV, raising=False)
    assert engine.choose_precision("32", "cpu") == "32-true"
    assert engine.choose_precision("bf16", "cpu") == "bf16-mixed"
    # auto on a CPU is the measured choice (BENCHMARKS.md, "CPU training precision"), whatever the CPU's flags
    assert engine.choose_precision("auto", "cpu") == engine.PRECISIONS[engine.CPU_AUTO_PRECISION]
    monkeypatch.setenv(engine.PRECISION_ENV, "bf16")
    assert engine.choose_precision("auto", "cpu") == "bf16-mixed"
    assert engine.choose_precision("32", "cpu") == "32-true"  # an explicit request is never overridden
    monkeypatch.setenv(engine.PRECISION_ENV, "32")
    assert engine.choose_precision("auto", "cpu") == "32-true"
    monkeypatch.setenv(engine.PRECISION_ENV, "auto")
    assert engine.choose_precision("auto", "cpu") == engine.PRECISIONS[engine.CPU_AUTO_PRECISION]


def test_bad_precision_is_one_clear_error(monkeypatch):
    monkeypatch.setenv(engine.PRECISION_ENV, "fp8")
    with pytest.raises(TransferkitError, match="TRANSFERKIT_PRECISION"):
        engine.choose_precision("auto", "cpu")
    monkeypatch.delenv(engine.PRECISION_ENV)
    with pytest.raises(TransferkitError, match="precision"):
        engine.choose_precision("64", "cpu")


class _Probe(torch.nn.Module):
    """Records the dtype the linear layer computed in, and whether CPU autocast was on."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
        self.seen: list[tuple[torch.dtype, bool]] = []

    def forward(self, x):
        y = self.net(x)
        self.seen.append((y.dtype, torch.is_autocast_enabled("cpu")))
        return y


def _fit_probe(tmp_path, precision: str) -> tuple[_Probe, list[float]]:
    import lightning.pytorch as pl

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.probe = _Probe()
            self.losses: list[float] = []

        def training_step(self, batch, _):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.probe(x).float().squeeze(1), y)
            self.losses.append(float(loss.detach()))
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    y = x[:, 0] * 2 - x[:, 1]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    cfg = engine.TrainConfig(epochs=6, device="cpu", precision=precision, seed=0)
    engine.seed_everything(0)
    module = Module()
    trainer = engine.make_trainer(cfg, tmp_path / "run", monitor=None)
    engine.fit(trainer, module, loader)
    return module.probe, module.losses


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_bf16_fit_runs_on_any_cpu(tmp_path, monkeypatch, how):
    """bf16-mixed training works on every CPU (oneDNN emulates bf16 where it is not native): the path is covered."""
    if how == "flag":
        monkeypatch.delenv(engine.PRECISION_ENV, raising=False)
        probe, losses = _fit_probe(tmp_path, "bf16")
    else:
        monkeypatch.setenv(engine.PRECISION_ENV, "bf16")
        probe, losses = _fit_probe(tmp_path, "auto")
    assert probe.seen and all(dtype == torch.bfloat16 and on for dtype, on in probe.seen)
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-4:]) < 0.5 * sum(losses[:4])  # it learned, in bf16


def test_fp32_fit_computes_in_fp32(tmp_path, monkeypatch):
    monkeypatch.setenv(engine.PRECISION_ENV, "32")
    probe, _ = _fit_probe(tmp_path, "auto")
    assert probe.seen and all(dtype == torch.float32 and not on for dtype, on in probe.seen)


def test_bf16_classify_finetune_end_to_end(tmp_path, colour_folders):
    """A task's whole fit (data, Lightning, checkpoints, model dir, report) in bf16, on any CPU."""
    import json

    from transferkit.tasks.classify import ClassifyConfig, evaluate, fit

    cfg = ClassifyConfig(strategy="finetune", backbone="test_efficientnet", weights="none", image_size=32,
                         batch_size=4, epochs=1, seed=0, precision="bf16", device="cpu")
    run = fit(cfg, colour_folders, tmp_path / "run")
    res = evaluate(run, colour_folders)
    assert res["n"] == 36 and 0.0 <= res["accuracy"] <= 1.0
    losses = [float(r["train_loss"]) for r in engine_rows(run) if r.get("train_loss")]
    assert losses and all(math.isfinite(v) for v in losses)
    saved = (run / "config.yaml").read_text()
    assert "precision: bf16" in saved
    assert json.loads((run / "model" / "config.json").read_text())["task"] == "classify"


def engine_rows(run):
    import csv

    with (run / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_auto_on_cpu_follows_each_tasks_measurement(monkeypatch):
    """Only tasks measured faster in bf16 train in it under auto, and only where the CPU has native bf16."""
    from transferkit.core.inference import cpu_supports_bf16
    from transferkit.tasks.classify import ClassifyConfig
    from transferkit.tasks.siamese.config import SiameseConfig

    monkeypatch.delenv(engine.PRECISION_ENV, raising=False)
    assert engine.choose_precision("auto", "cpu", cpu_bf16_measured=True) == ("bf16-mixed" if cpu_supports_bf16() else "32-true")
    assert engine.choose_precision("auto", "cpu", cpu_bf16_measured=False) == "32-true"
    assert SiameseConfig.CPU_BF16_MEASURED and not getattr(ClassifyConfig, "CPU_BF16_MEASURED", False)
    monkeypatch.setenv(engine.PRECISION_ENV, "32")  # the override beats the per-task measurement
    assert engine.choose_precision("auto", "cpu", cpu_bf16_measured=True) == "32-true"


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_recurrent_layers_train_under_forced_bf16_on_any_cpu(cell):
    """oneDNN has no bf16 LSTM/GRU on AVX2-only CPUs: core.rnn runs them in fp32 there, so a forced
    --precision bf16 trains seq2seq and caption on every CPU (the same parameters as nn.LSTM / nn.GRU)."""
    import torch

    from transferkit.core.rnn import GRU, LSTM

    torch.manual_seed(0)
    layer = (LSTM if cell == "lstm" else GRU)(6, 8, 1, batch_first=True)
    assert set(layer.state_dict()) == set((torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(6, 8, 1).state_dict())
    x = torch.randn(3, 5, 6)
    h = torch.zeros(1, 3, 8)  # an fp32 initial state, as the decoders give it: what oneDNN rejects on AVX2
    hx = (h, torch.zeros(1, 3, 8)) if cell == "lstm" else h
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = layer(x, hx)  # fp32 input and state (embeddings are fp32 under autocast), bf16 weights
        loss = out.float().pow(2).mean()
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in layer.parameters())
