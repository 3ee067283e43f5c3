"""One package per task; each has a config dataclass, a LightningModule, fit/evaluate and a CLI module."""
