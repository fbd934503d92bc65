"""Figures, drawn with matplotlib's object API (no pyplot state, no display needed)."""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullLocator


def _step_edges(steps) -> np.ndarray:
    steps = np.asarray(steps, dtype=float)
    return np.concatenate([steps, [steps[-1] + (steps[-1] - steps[-2] if len(steps) > 1 else 1)]]) + 1


def heatmap_on(ax, steps, values, row_labels, vmin, vmax, cmap):
    """values (T, R) on ax: one row per R, one column per step, log-scaled step + 1 axis."""
    values = np.clip(np.asarray(values, dtype=float), vmin, vmax)
    mesh = ax.pcolormesh(_step_edges(steps), np.arange(len(row_labels) + 1), values.T, cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xscale("log")
    # plain labels (1, 10, 100): the log scale's default ones are mathtext, slow to lay out; no
    # minor ticks: drawing their ~60 marks took a third of the figure's time, every run draws one
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_yticks(np.arange(len(row_labels)) + 0.5, [str(r) for r in row_labels])
    ax.set_xlabel("step + 1")
    return mesh


class _Kept:
    """A heat map kept for reuse (heatmap(..., reuse=True)) and, from its second PNG on, saved
    by blitting: the figure without its mesh, tick marks, frame and title is drawn once at that
    dpi and restored for each save, then only those are drawn on it (14 ms against 51 ms a
    figure built and saved; the pixels of a full draw, tests/test_batched.py compares them)."""

    def __init__(self, fig, mesh, ax):
        self.fig, self.mesh, self.ax = fig, mesh, ax
        self.saved = 0
        self.canvas = self.background = self.dpi = self.title_at = None  # the background, drawn at the second save

    def _changing(self):
        """What a save draws on the background, in the order a full draw draws it (z-order):
        the mesh, the tick marks (their ends overlap the mesh), the frame."""
        ticks = [t.tick1line for axis in (self.ax.xaxis, self.ax.yaxis) for t in axis.get_major_ticks()]
        return [self.mesh, *ticks, *self.ax.spines.values()]

    def save_png(self, path, dpi) -> None:
        from matplotlib import __version__
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.image import imsave

        self.saved += 1
        if self.saved == 1:  # a single figure (one run's end): a plain save, no background drawn
            self.fig.savefig(path, dpi=dpi)
            return
        title = self.ax.title
        if self.background is None or self.dpi != dpi:
            self.fig.dpi, self.dpi = dpi, dpi
            self.canvas = FigureCanvasAgg(self.fig)
            for artist in self._changing():
                artist.set_visible(False)
            title.set_alpha(0)  # drawn invisibly: the full draw places it (Axes._update_title_position)
            self.canvas.draw()
            self.background = self.canvas.copy_from_bbox(self.fig.bbox)
            self.title_at = title.get_position()
            title.set_alpha(None)
            for artist in self._changing():
                artist.set_visible(True)
        self.canvas.restore_region(self.background)
        renderer = self.canvas.get_renderer()
        title.set_position(self.title_at)  # set_title put it back at its default
        for artist in [*self._changing(), title]:
            artist.draw(renderer)
        # what savefig writes for a PNG (FigureCanvasAgg.print_png): same encoder, same metadata
        imsave(path, self.canvas.buffer_rgba(), format="png", origin="upper", dpi=dpi,
               metadata={"Software": f"Matplotlib version{__version__}, https://matplotlib.org/"})


_KEPT = {}  # a heat map's layout → _Kept, for heatmap(..., reuse=True)


def save(fig, path, dpi: int) -> None:
    """fig to path (the format from its suffix), as fig.savefig does; a kept heat map's PNG by blitting."""
    kept = next((k for k in _KEPT.values() if k.fig is fig), None)
    if kept is not None and str(path).lower().endswith(".png"):
        kept.save_png(path, dpi)
    else:
        fig.savefig(path, dpi=dpi)


def heatmap(steps, values, row_labels, title, cbar_label, vmin=0.1, vmax=1.0, cmap="RdBu_r", ylabel="frequency index k",
            reuse=False):
    """values (T, R) as an image: one row per R (first at the bottom), one column per step.

    Step axis log-scaled (step + 1) so the early, interesting part of training is visible.
    Axes placed at fixed margins (in inches): every run draws one, and matplotlib's
    constrained layout would double the drawing time (~0.16 s against ~0.08 s here).
    reuse=True: the figure of the last heat map with the same steps, rows, scale and labels,
    given these values and this title (no new figure, axes, ticks or colour bar), saved by
    `save` from a background drawn once (`_Kept`); it changes at the next such call, so only
    for a caller that saves it at once (a run's end: many runs of a batched group draw the
    same layout).
    """
    lines = title.count("\n") + 1
    key = (tuple(np.asarray(steps).tolist()), tuple(map(str, row_labels)), lines, cbar_label, vmin, vmax, cmap, ylabel)
    if reuse and key in _KEPT:
        kept = _KEPT[key]
        kept.mesh.set_array(np.clip(np.asarray(values, dtype=float), vmin, vmax).T)
        kept.ax.set_title(title, fontsize="medium")
        return kept.fig
    w, h = 7.0, 0.5 * len(row_labels) + 1.95 + 0.25 * lines
    left, right, bottom, top, bar, gap = 0.85, 1.0, 0.55, 0.15 + 0.25 * lines, 0.15, 0.15
    fig = Figure(figsize=(w, h))
    ax = fig.add_axes((left / w, bottom / h, 1 - (left + right) / w, 1 - (bottom + top) / h))
    cax = fig.add_axes((1 - (right - gap) / w, bottom / h, bar / w, 1 - (bottom + top) / h))
    mesh = heatmap_on(ax, steps, values, row_labels, vmin, vmax, cmap)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize="medium")
    fig.colorbar(mesh, cax=cax, label=cbar_label)
    if reuse:
        if len(_KEPT) >= 4:
            _KEPT.clear()
        _KEPT[key] = _Kept(fig, mesh, ax)
    return fig


def heatmap_panels(steps, panels: dict, row_labels, title, cbar_label, vmin=0.1, vmax=1.0, cmap="RdBu_r", ylabel=""):
    """Several heat maps (T, R) side by side with one colour scale, one panel per entry of panels."""
    fig = Figure(figsize=(4.2 * len(panels) + 1.2, 0.5 * len(row_labels) + 2.4), layout="constrained")
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, (name, values) in zip(axes, panels.items()):
        mesh = heatmap_on(ax, steps, values, row_labels, vmin, vmax, cmap)
        ax.set_title(name)
    axes[0].set_ylabel(ylabel)
    fig.suptitle(title)
    fig.colorbar(mesh, ax=list(axes), label=cbar_label)
    return fig


def cosine_panels(matrices: dict, title=""):
    """Cosine-similarity matrices (m, m) side by side, each in its own dendrogram order so
    aligned neurons show as blocks; colour −1 (opposite, blue) to +1 (aligned, red)."""
    from fpdsl.condensation import block_order

    fig = Figure(figsize=(4.3 * len(matrices) + 1.0, 4.4), layout="constrained")
    axes = fig.subplots(1, len(matrices), squeeze=False)[0]
    for ax, (name, d) in zip(axes, matrices.items()):
        order = block_order(d)
        img = ax.imshow(d[np.ix_(order, order)], cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_title(name)
        ax.set_xlabel("neuron (clustered order)")
    axes[0].set_ylabel("neuron (clustered order)")
    fig.suptitle(title)
    fig.colorbar(img, ax=list(axes), label="cos(u_k, u_l)")
    return fig


def orientation_scatter(points: dict, title=""):
    """points: label → (θ, A); θ in [−π, π] on the x axis, A on the y axis."""
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for i, (label, (theta, amp)) in enumerate(points.items()):
        ax.scatter(theta, amp, s=14, alpha=0.4 if i < len(points) - 1 else 0.9, label=label)
    ax.set_xlim(-np.pi, np.pi)
    ax.set_xlabel("θ_k = sign(b_k) arccos(w_k / |u_k|)")
    ax.set_ylabel("A_k = a_k |u_k|")
    ax.set_title(title)
    ax.legend(fontsize="small")
    return fig


def heatmap_image(steps, values, vmin, vmax, cmap="RdBu_r", width=256, row_px=12) -> np.ndarray | None:
    """The heat map so far as an RGB array (uint8, rows: first value at the bottom), columns on
    the log step + 1 axis: a picture for MLflow's image chart, made without drawing a figure."""
    from matplotlib import colormaps

    steps = np.asarray(steps, dtype=float)
    v = np.asarray(values, dtype=float)
    if v.ndim != 2 or len(steps) == 0:
        return None
    lo, hi = np.log10(steps[0] + 1), np.log10(max(steps[-1], steps[0] + 1) + 1)
    cols = np.searchsorted(np.log10(steps + 1), np.linspace(lo, hi, width), side="right") - 1
    grid = (np.clip(v[np.clip(cols, 0, len(steps) - 1)], vmin, vmax) - vmin) / (vmax - vmin)  # (width, K)
    rgb = colormaps[cmap](grid.T[::-1])[..., :3]  # (K, width, 3), first row at the bottom
    return (np.repeat(rgb, row_px, axis=0) * 255).astype(np.uint8)


def similarity_image(similarity: np.ndarray, px: int = 4) -> np.ndarray:
    """A cosine-similarity matrix in dendrogram order as an RGB array (−1 blue, +1 red)."""
    from matplotlib import colormaps

    from fpdsl.condensation import block_order

    order = block_order(similarity)
    grid = (np.clip(similarity[np.ix_(order, order)], -1, 1) + 1) / 2
    rgb = colormaps["RdBu_r"](grid)[..., :3]
    return (np.repeat(np.repeat(rgb, px, axis=0), px, axis=1) * 255).astype(np.uint8)
