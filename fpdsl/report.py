"""python -m fpdsl.report — a comparison report built from MLflow runs.

Reads runs from any tracking store (by experiment name, optionally filtered by tag),
writes a folder with report.md and figures: a grid of Δ_F heat maps on one colour
scale, the F-Principle order table, e_low/e_high curves, condensation maps with the
orientation count next to 2p, spectral-bias amplitude maps. The folder is also logged
as the artifacts of a summary run (experiment `fpdsl-report`), so it shows in `mlflow ui`.
"""
from __future__ import annotations

import argparse
import io
import math
import os
import time
from pathlib import Path

import numpy as np

from fpdsl.figures import heatmap_on

REPORT_EXPERIMENT = "fpdsl-report"


def collect(client, experiments, tags=None):
    """Finished or failed runs with their probe histories, ordered by experiment then start time."""
    exps = [client.get_experiment_by_name(n) for n in experiments] if experiments else [
        e for e in client.search_experiments() if e.name != REPORT_EXPERIMENT
    ]
    missing = [n for n, e in zip(experiments or [], exps) if e is None]
    if missing:
        raise SystemExit(f"fpdsl.report: error: no experiment named {missing[0]!r} in {client.tracking_uri}")
    flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in (tags or {}).items())
    runs = []
    for exp in exps:
        found = client.search_runs([exp.experiment_id], filter_string=flt, order_by=["attributes.start_time ASC"], max_results=5000)
        for r in found:
            if r.info.status == "RUNNING":
                continue
            runs.append({"run": r, "experiment": exp.name, "history": _history(client, r.info.run_id)})
    return runs


def _history(client, run_id):
    try:
        path = client.download_artifacts(run_id, "probe_history.npz")
    except Exception:
        return {}
    with np.load(io.BytesIO(Path(path).read_bytes())) as z:
        return {k: z[k] for k in z.files}


def label(entry):
    t, p = entry["run"].data.tags, entry["run"].data.params
    if t.get("fpdsl.experiment"):  # the experiment file says it best
        return t["fpdsl.experiment"] + (f" · s{p['seed']}" if p.get("seed", "0") != "0" else "")
    bits = [t.get("fpdsl.optimizer") or _optimizer_from_params(p)]
    for key in ("model", "dataset", "loss"):
        if t.get(f"fpdsl.{key}") not in (None, "mlp", "sines1d", "mse"):
            bits.append(t[f"fpdsl.{key}"])
    if p.get("model.activation") and p.get("model.activation") != "tanh":
        bits.append(p["model.activation"])
    if "seed" in p and p["seed"] != "0":
        bits.append(f"s{p['seed']}")
    return " · ".join(bits)


def _optimizer_from_params(p):
    """A name for the optimizer of a run composed without Hydra's CLI (no choice tags)."""
    for key in ("optimizer.method", "optimizer.name", "optimizer.optimizer._target_", "optimizer._target_"):
        if key in p:
            return p[key].rsplit(".", 1)[-1].lower()
    return "?"


def _grid(n, width=4.2, height=2.8):
    from matplotlib.figure import Figure

    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols + 1.2, height * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def spectrum_grid(entries, probe="spectrum"):
    have = [e for e in entries if f"{probe}/steps" in e["history"]]
    if not have:
        return None
    fig, axes = _grid(len(have))
    for ax, e in zip(axes, have):
        h, m, t = e["history"], e["run"].data.metrics, e["run"].data.tags
        variant = t.get(f"{probe}/delta_variant", "complex")
        mesh = heatmap_on(ax, h[f"{probe}/steps"], h[f"{probe}/delta_{variant}"], h[f"{probe}/peaks"], 0.1, 1.0, "RdBu_r")
        ax.set_title(f"{label(e)}\n{t.get(f'{probe}/fp_verdict', '?')}, order {m.get(f'{probe}/fp_order', float('nan')):+.2f}", fontsize=9)
        ax.set_xlabel("step + 1")
        ax.set_ylabel("peak k")
    fig.colorbar(mesh, ax=list(axes), label="Δ_F (clipped to [0.1, 1])", shrink=0.8)
    fig.suptitle(f"{probe}: Δ_F at the target's peaks, one colour scale")
    return fig


def amplitude_grid(entries):
    have = [e for e in entries if "spectral_amplitude/steps" in e["history"]]
    if not have:
        return None
    fig, axes = _grid(len(have))
    for ax, e in zip(axes, have):
        h, m = e["history"], e["run"].data.metrics
        order = np.argsort(h["spectral_amplitude/frequencies"])
        mesh = heatmap_on(ax, h["spectral_amplitude/steps"], h["spectral_amplitude/amplitude"][:, order],
                     [f"{f:g}" for f in h["spectral_amplitude/frequencies"][order]], 0.0, 1.0, "viridis")
        ax.set_title(f"{label(e)} · {e['experiment']}\norder {m.get('spectral_amplitude/fp_order', float('nan')):+.2f}", fontsize=9)
        ax.set_xlabel("step + 1")
        ax.set_ylabel("frequency k")
    fig.colorbar(mesh, ax=list(axes), label="2|ĥ(k)|/(n A) (clipped to [0, 1])", shrink=0.8)
    fig.suptitle("spectral bias: normalised amplitude per target frequency")
    return fig


def filtering_curves(entries):
    have = [e for e in entries if "filtering/steps" in e["history"]]
    if not have:
        return None
    fig, axes = _grid(len(have))
    for ax, e in zip(axes, have):
        h = e["history"]
        steps = h["filtering/steps"] + 1
        for i, d in enumerate(h["filtering/deltas"]):
            (line,) = ax.plot(steps, h["filtering/e_low"][:, i], label=f"low δ={d:.3g}")
            ax.plot(steps, h["filtering/e_high"][:, i], "--", color=line.get_color(), label=f"high δ={d:.3g}")
        ax.set_xscale("log")
        ax.set_ylim(0, max(1.05, float(np.nanmax(h["filtering/e_high"][:1])) if len(steps) else 1.05))
        ax.set_title(f"{label(e)}\n{e['run'].data.tags.get('filtering/fp_verdict', '?')}", fontsize=9)
        ax.set_xlabel("step + 1")
        ax.set_ylabel("relative error")
    axes[0].legend(fontsize=6)
    fig.suptitle("filtering method: e_low (solid) falls before e_high (dashed)")
    return fig


def condensation_grid(entries):
    have = [e for e in entries if "condensation/features_last" in e["history"]]
    if not have:
        return None
    from fpdsl.condensation import block_order, cosine_similarity

    fig, axes = _grid(len(have), width=3.4, height=3.2)
    for ax, e in zip(axes, have):
        u = e["history"]["condensation/features_last"]
        s = cosine_similarity(u)
        idx = block_order(s)
        mesh = ax.imshow(s[np.ix_(idx, idx)], cmap="RdBu_r", vmin=-1, vmax=1)
        n = int(e["history"]["condensation/n_orientations"][-1])
        p = _multiplicity(e)
        ax.set_title(f"{label(e)}\n{n} orientation(s), 2p = {2 * p if p else '?'}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(mesh, ax=list(axes), label="cosine similarity", shrink=0.8)
    fig.suptitle("condensation: neuron features (w_k, b_k) at the last recorded step")
    return fig


def order_table(entries):
    rows = ["| experiment | run | probe | verdict | order | final loss | steps | evals |", "|---|---|---|---|---|---|---|---|"]
    for e in entries:
        r = e["run"]
        m, t = r.data.metrics, r.data.tags
        for probe in ("spectrum", "projection", "filtering", "spectral_amplitude"):
            if f"{probe}/fp_order" not in m:
                continue
            rows.append(
                f"| {e['experiment']} | {label(e)} | {probe} | {t.get(f'{probe}/fp_verdict', '?')} | "
                f"{m[f'{probe}/fp_order']:+.2f} | {m.get('final_loss', float('nan')):.2e} | "
                f"{_last_step(e, probe)} | {int(m.get('n_evals', 0))} |"
            )
        if "condensation/final_n_orientations" in m:
            p = _multiplicity(e)
            n = int(m["condensation/final_n_orientations"])
            verdict = "?" if p is None else ("≤ 2p" if n <= 2 * p else "> 2p")
            rows.append(f"| {e['experiment']} | {label(e)} | condensation | {n} orientations, {verdict} (2p = {2 * p if p else '?'}) | | "
                        f"{m.get('final_loss', float('nan')):.2e} | {_last_step(e, 'condensation')} | {int(m.get('n_evals', 0))} |")
    return "\n".join(rows)


def _multiplicity(e):
    """p of the run's activation, as the condensation probe measured it (None if unknown)."""
    p = e["run"].data.metrics.get("condensation/multiplicity")
    return None if p is None else int(p)


def _last_step(e, probe):
    s = e["history"].get(f"{probe}/steps")
    return int(s[-1]) if s is not None and len(s) else ""


def build(uri, experiments, tags, out: Path, log=True):
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = MlflowClient(tracking_uri=uri)
    entries = collect(client, experiments, tags)
    if not entries:
        raise SystemExit(f"fpdsl.report: error: no finished runs in {uri} for experiments {experiments or 'all'}")
    out.mkdir(parents=True, exist_ok=True)
    figures = {
        "spectrum_grid.png": ("Δ_F heat maps (1-D DFT method)", spectrum_grid(entries)),
        "projection_grid.png": ("Δ_F along the first principal component (projection method)", spectrum_grid(entries, "projection")),
        "filtering.png": ("e_low / e_high (filtering method)", filtering_curves(entries)),
        "spectral_amplitude.png": ("Spectral bias: normalised amplitudes", amplitude_grid(entries)),
        "condensation.png": ("Condensation: cosine similarity of neuron features", condensation_grid(entries)),
    }
    lines = [
        "# fpdsl report",
        "",
        f"{len(entries)} runs from `{uri}` (experiments: {', '.join(sorted({e['experiment'] for e in entries}))}), "
        f"built {time.strftime('%Y-%m-%d %H:%M')}. Verdicts and order scores follow SCIENCE.md §1.2 "
        "(+1: low frequencies converge first).",
        "",
        "## F-Principle order",
        "",
        order_table(entries),
        "",
    ]
    for name, (title, fig) in figures.items():
        if fig is None:
            continue
        fig.savefig(out / name, dpi=110)
        lines += [f"## {title}", "", f"![{title}]({name})", ""]
    (out / "report.md").write_text("\n".join(lines))
    if log:
        exp = client.get_experiment_by_name(REPORT_EXPERIMENT)
        exp_id = exp.experiment_id if exp else client.create_experiment(REPORT_EXPERIMENT)
        run = client.create_run(exp_id, run_name="report", tags={"fpdsl.kind": "report", "fpdsl.experiments": ",".join(experiments or [])})
        client.log_artifacts(run.info.run_id, str(out), "report")
        client.set_terminated(run.info.run_id)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m fpdsl.report", description=__doc__.splitlines()[0])
    ap.add_argument("--uri", default=os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db", help="MLflow tracking URI")
    ap.add_argument("--experiment", "-e", action="append", help="experiment name (repeatable; default: all)")
    ap.add_argument("--tag", action="append", default=[], help="KEY=VALUE: only runs with this tag (repeatable)")
    ap.add_argument("--out", default=None, help="output folder (default: reports/<time>)")
    ap.add_argument("--no-log", action="store_true", help="do not log the report as an MLflow run")
    a = ap.parse_args(argv)
    tags = {}
    for t in a.tag:
        k, sep, v = t.partition("=")
        if not sep:
            ap.error(f"--tag {t!r}: write KEY=VALUE")
        tags[k] = v
    out = Path(a.out or f"reports/{time.strftime('%Y%m%d-%H%M%S')}")
    build(a.uri, a.experiment, tags, out, log=not a.no_log)
    print(f"fpdsl.report: {out / 'report.md'}")


if __name__ == "__main__":
    main()
