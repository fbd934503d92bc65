"""Figures, drawn with matplotlib's object API (no pyplot state, no display needed)."""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure


def heatmap(steps, values, row_labels, title, cbar_label, vmin=0.1, vmax=1.0, cmap="RdBu_r", ylabel="frequency index k"):
    """values (T, R) as an image: one row per R (first at the bottom), one column per step.

    Step axis log-scaled (step + 1) so the early, interesting part of training is visible.
    """
    steps = np.asarray(steps, dtype=float)
    values = np.clip(np.asarray(values, dtype=float), vmin, vmax)
    edges = np.concatenate([steps, [steps[-1] + (steps[-1] - steps[-2] if len(steps) > 1 else 1)]]) + 1
    fig = Figure(figsize=(7, 0.5 * len(row_labels) + 2.2), layout="constrained")
    ax = fig.add_subplot()
    mesh = ax.pcolormesh(edges, np.arange(len(row_labels) + 1), values.T, cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xscale("log")
    ax.set_yticks(np.arange(len(row_labels)) + 0.5, [str(r) for r in row_labels])
    ax.set_xlabel("step + 1")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.colorbar(mesh, ax=ax, label=cbar_label)
    return fig
