"""Pictures of a Siamese run: curves, distance histograms with the threshold, ROC, episodes as ranked supports."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from transferkit.core.report import Report, plot_curves, plt


def save_figure(fig: Any, path: Path) -> Path:
    """Write a matplotlib figure as PNG, atomically, and close it."""
    import io

    from transferkit.core.modeldir import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt().close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def distance_histogram(d_same: np.ndarray, d_diff: np.ndarray, threshold: float | None, title: str = ""):
    """Overlaid histograms of same-class and different-class pair distances, with the threshold."""
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(6.4, 3.6))
    both = np.r_[d_same, d_diff]
    bins = np.linspace(float(both.min()), float(both.max()) + 1e-9, 50) if len(both) else 10
    ax.hist(d_same, bins=bins, alpha=0.6, label=f"same class ({len(d_same)})", color="tab:green")
    ax.hist(d_diff, bins=bins, alpha=0.6, label=f"different classes ({len(d_diff)})", color="tab:red")
    if threshold is not None:
        ax.axvline(threshold, color="black", ls="--", label=f"threshold {threshold:.3g}")
    ax.set_xlabel("distance")
    ax.set_ylabel("pairs")
    ax.set_title(title or "Pair distances")
    ax.legend()
    fig.tight_layout()
    return fig


def roc_figure(d_same: np.ndarray, d_diff: np.ndarray, cal: Any = None):
    """ROC curve (true-accept rate against false-accept rate), with the chosen operating point."""
    from sklearn.metrics import roc_curve

    pyplot = plt()
    y = np.r_[np.ones(len(d_same)), np.zeros(len(d_diff))]
    fpr, tpr, _ = roc_curve(y, -np.r_[d_same, d_diff])
    fig, ax = pyplot.subplots(figsize=(4.6, 4.2))
    ax.plot(fpr, tpr, label="ROC" + (f" (AUC {cal.auc:.3f})" if cal is not None else ""))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    if cal is not None:
        ax.scatter([cal.far], [1 - cal.frr], color="black", zorder=3,
                   label=f"threshold ({cal.method}): FAR {cal.far:.1%}, FRR {cal.frr:.1%}")
    ax.set_xlabel("false-accept rate")
    ax.set_ylabel("true-accept rate")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def episodes_figure(images: np.ndarray, rows: Sequence[tuple[int, Sequence[int], Sequence[float], int]], top: int = 8,
                    measure: str = "distance"):
    """Each row: the query, then its support images ranked best first (the right class framed in green).

    ``rows``: (query index, support indices in rank order, their ``measure`` (distance or match score), rank of
    the right class).
    """
    pyplot = plt()
    ncols = 1 + min(top, max((len(r[1]) for r in rows), default=1))
    fig, axes = pyplot.subplots(len(rows), ncols, figsize=(1.25 * ncols, 1.45 * len(rows)), squeeze=False)
    for r, (q, sup, dist, right) in enumerate(rows):
        for c in range(ncols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                img, title, colour = images[q], "query", "black"
            elif c - 1 < len(sup):
                k = c - 1
                img, title = images[sup[k]], f"#{k + 1} {dist[k]:.3g}"
                colour = "tab:green" if k == right else ("tab:red" if k == 0 else "black")
            else:
                ax.axis("off")
                continue
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
            ax.set_title(title, fontsize=7, color=colour)
            for side in ax.spines.values():
                side.set_color(colour)
                side.set_linewidth(2.5 if colour != "black" else 0.8)
    fig.suptitle(f"Query, then the support set ranked by {measure} (green: the right class)", fontsize=9)
    fig.tight_layout()
    return fig


def write_report(run_dir: Path, title: str, metrics: dict[str, list[tuple[int, float]]], summary: dict[str, Any],
                 config: dict[str, Any], pictures: Sequence[tuple[str, str]]) -> Path:
    """``report.html``: curves from metrics.csv, then the given pictures (already saved PNGs), summary, config."""
    rep = Report(run_dir, title)
    rep.heading("Summary")
    rep.table(["", "value"], [(k, v) for k, v in summary.items()])
    rep.heading("Training")
    rep.figure(plot_curves(metrics, ["train_loss"], "Training loss", "loss"), "curves_loss.png", "Training loss per epoch.")
    if metrics.get("val_acc"):
        rep.figure(plot_curves(metrics, ["val_acc"], "One-shot accuracy on held-out classes", "accuracy"),
                   "curves_val_acc.png", "Validation: N-way one-shot accuracy on classes never trained on.")
    for name, caption in pictures:
        if (run_dir / name).is_file():
            rep.image(run_dir / name, caption)
    rep.config(config)
    return rep.write()
