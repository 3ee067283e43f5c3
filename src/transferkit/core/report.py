"""``report.html``: a self-contained page of plots, image grids and tables for a run.

Pictures are written as PNG files in the run folder *and* embedded in the page
(base64), so the report opens offline, alone, and the images are still there
for slides.  Every ``<img>`` carries ``data-file="name.png"`` naming its file.

    rep = Report(run_dir, "Transfer learning: ants vs bees")
    rep.figure(plot_curves(metrics_by_epoch(run_dir), ["train_loss", "val_loss"]), "curves.png", "Loss")
    rep.table(["class", "precision"], rows)
    rep.config(cfg_dict)
    rep.write()
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path
from typing import Any, Sequence

from transferkit.core.modeldir import atomic_write_bytes, atomic_write_text


def plt():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as pyplot

    return pyplot


class Report:
    """Accumulates sections, then :meth:`write` renders ``report.html``."""

    def __init__(self, run_dir: str | os.PathLike, title: str):
        self.run_dir = Path(run_dir)
        self.title = title
        self.parts: list[str] = []
        self.images: list[str] = []

    def heading(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def text(self, text: str) -> None:
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def figure(self, fig: Any, name: str, caption: str = "") -> Path:
        """Save a matplotlib figure as ``run_dir/name`` (PNG) and embed it."""
        import io

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt().close(fig)
        path = atomic_write_bytes(self.run_dir / name, buf.getvalue())
        self._img(path.name, buf.getvalue(), caption)
        return path

    def image(self, path: str | os.PathLike, caption: str = "") -> None:
        """Embed an existing PNG/JPEG from the run folder."""
        path = Path(path)
        self._img(path.name, path.read_bytes(), caption)

    def _img(self, name: str, data: bytes, caption: str) -> None:
        kind = "jpeg" if name.lower().endswith((".jpg", ".jpeg")) else "png"
        b64 = base64.b64encode(data).decode("ascii")
        self.images.append(name)
        cap = f"<figcaption>{html.escape(caption)} <a href='{html.escape(name)}'>{html.escape(name)}</a></figcaption>"
        self.parts.append(
            f"<figure><img data-file='{html.escape(name)}' alt='{html.escape(caption or name)}' "
            f"src='data:image/{kind};base64,{b64}'>{cap}</figure>"
        )

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]], caption: str = "") -> None:
        def cell(v: Any) -> str:
            if isinstance(v, float):
                return f"{v:.4g}"
            return html.escape(str(v))

        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        self.parts.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def config(self, cfg: dict[str, Any], title: str = "Configuration") -> None:
        self.heading(title)
        self.parts.append(f"<pre>{html.escape(json.dumps(cfg, indent=2, default=str, ensure_ascii=False))}</pre>")

    def write(self, name: str = "report.html") -> Path:
        style = (
            "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
            "img{max-width:100%;border:1px solid #ddd}figure{margin:1em 0}figcaption{color:#555;font-size:.9em}"
            "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}"
            "th{background:#f3f3f3}pre{background:#f7f7f7;padding:1em;overflow:auto}"
        )
        page = (
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(self.title)}</h1>"
            + "\n".join(self.parts)
            + "</body></html>\n"
        )
        return atomic_write_text(self.run_dir / name, page)


# --------------------------------------------------------------------------- common pictures


def plot_curves(metrics: dict[str, list[tuple[int, float]]], keys: Sequence[str], title: str = "", ylabel: str = "",
                logy: bool = False):
    """Line plot of several metrics against epoch (missing keys are skipped)."""
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(6.4, 3.8))
    for k in keys:
        pts = metrics.get(k)
        if pts:
            ax.plot([e + 1 for e, _ in pts], [v for _, v in pts], marker="o", ms=3, label=k)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    ax.grid(alpha=0.3)
    return fig


def image_grid(images: Sequence[Any], titles: Sequence[str] | None = None, ncols: int = 8, size: float = 1.6,
               cmap: str | None = None, title_colors: Sequence[str] | None = None):
    """A grid of images (HxW or HxWxC arrays in [0,1] or uint8, or PIL images) with optional titles."""
    import numpy as np

    pyplot = plt()
    n = max(len(images), 1)
    ncols = min(ncols, n)
    nrows = (n + ncols - 1) // ncols
    fig, axes = pyplot.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + (0.3 if titles else 0)), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= len(images):
            continue
        arr = np.asarray(images[i])
        if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
            arr = arr.transpose(1, 2, 0)
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.dtype != np.uint8:
            arr = np.clip(arr, 0, 1)
        ax.imshow(arr, cmap=cmap or ("gray" if arr.ndim == 2 else None), vmin=0 if arr.ndim == 2 and arr.dtype != np.uint8 else None,
                  vmax=1 if arr.ndim == 2 and arr.dtype != np.uint8 else None)
        if titles:
            color = title_colors[i] if title_colors else "black"
            ax.set_title(titles[i], fontsize=7, color=color)
    fig.tight_layout()
    return fig


def confusion_figure(matrix: Any, class_names: Sequence[str], title: str = "Confusion matrix"):
    """Heat map of a confusion matrix (rows: true, columns: predicted) with counts."""
    import numpy as np

    pyplot = plt()
    m = np.asarray(matrix)
    k = len(class_names)
    side = min(max(3.5, 0.45 * k + 2), 14)
    fig, ax = pyplot.subplots(figsize=(side, side))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(k), class_names, rotation=90 if k > 6 else 0, fontsize=8)
    ax.set_yticks(range(k), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if k <= 30:
        top = m.max() if m.size else 0
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(int(m[i, j])), ha="center", va="center", fontsize=7,
                        color="white" if top and m[i, j] > top / 2 else "black")
    fig.tight_layout()
    return fig
