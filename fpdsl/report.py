"""python -m fpdsl.report — what the runs in a store show, aggregated over seeds.

Runs that differ only in their seed form one group (usually: one experiment file swept
over seeds). Per group and probe the report gives the verdict counts ("holds in 5/5"),
the mean and a 95 % t-interval of the order scores and the final loss, the converge step
of each frequency (median and range over seeds), and the heat map of the group's median
run (by final loss). An experiment file may state its claim (`claim:` in the config):
the report then says in how many seeds it was re-obtained. It writes report.md, a claims
table (also into the README between its reproduce markers with --readme), and figures;
and logs them as a run of the experiment `fpdsl-report` in the same store.
"""
from __future__ import annotations

import argparse
import io
import math
import os
import re
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from fpdsl.figures import heatmap_on

REPORT_EXPERIMENT = "fpdsl-report"
FP_PROBES = ("spectrum", "projection", "filtering", "spectral_amplitude")
SEED_KEYS = ("seed", "dataset.seed")
IGNORED = ("budget.", "resume", "progress", "threads", "tracking.", "checkpoint.", "device", "figures.", "choice.", "claim.")
MARKERS = ("<!-- reproduce:start -->", "<!-- reproduce:end -->")


# -- reading ------------------------------------------------------------------------------
def collect(client, experiments, tags=None):
    """Ended runs (not sweeps' parent runs) with their probe histories, oldest first."""
    exps = [client.get_experiment_by_name(n) for n in experiments] if experiments else [
        e for e in client.search_experiments() if e.name != REPORT_EXPERIMENT
    ]
    missing = [n for n, e in zip(experiments or [], exps) if e is None]
    if missing:
        raise SystemExit(f"fpdsl.report: error: no experiment named {missing[0]!r} in {client.tracking_uri}")
    flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in (tags or {}).items())
    runs = []
    for exp in exps:
        found = client.search_runs([exp.experiment_id], filter_string=flt, order_by=["attributes.start_time ASC"],
                                   max_results=50000)
        for r in found:
            if r.info.status == "RUNNING" or r.data.tags.get("fpdsl.role") == "sweep":
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


def group_key(entry) -> tuple:
    p = entry["run"].data.params
    kept = tuple(sorted((k, v) for k, v in p.items() if k not in SEED_KEYS and not k.startswith(IGNORED)))
    return (entry["experiment"], name_of(entry), kept)


def name_of(entry) -> str:
    t, p = entry["run"].data.tags, entry["run"].data.params
    if t.get("fpdsl.experiment"):
        return t["fpdsl.experiment"]
    bits = [t.get("fpdsl.optimizer") or p.get("choice.optimizer") or "?"]
    for key in ("model", "dataset", "loss"):
        if t.get(f"fpdsl.{key}") not in (None, "mlp", "sines1d", "mse"):
            bits.append(t[f"fpdsl.{key}"])
    return " · ".join(bits)


def groups(entries) -> list[dict]:
    out = defaultdict(list)
    for e in entries:
        out[group_key(e)].append(e)
    result = []
    for (experiment, name, _), members in out.items():
        result.append({"experiment": experiment, "name": name, "runs": members})
    # a name shared by groups that differ in something else: say what differs
    counts = defaultdict(int)
    for g in result:
        counts[g["name"]] += 1
    for g in result:
        if counts[g["name"]] > 1:
            g["name"] += " · " + _difference(g, [h for h in result if h["name"] == g["name"]])
    return result


def _difference(g, same):
    mine = dict(group_key(g["runs"][0])[2])
    for h in same:
        if h is g:
            continue
        other = dict(group_key(h["runs"][0])[2])
        diff = [f"{k}={v}" for k, v in mine.items() if other.get(k) != v]
        if diff:
            return ", ".join(diff[:2])
    return "?"


# -- statistics -----------------------------------------------------------------------------
def mean_ci(values) -> tuple[float, float, int]:
    """Mean and the half-width of a 95 % t-interval of the finite values (NaN with fewer than 2)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if len(v) == 0:
        return math.nan, math.nan, 0
    if len(v) == 1:
        return float(v[0]), math.nan, 1
    from scipy.stats import t

    return float(v.mean()), float(t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))), len(v)


def fmt_ci(values, spec="+.2f") -> str:
    m, h, n = mean_ci(values)
    if n == 0:
        return "—"
    return f"{m:{spec}}" + ("" if not np.isfinite(h) else f" ± {h:{spec.lstrip('+')}}")


def counts(values) -> str:
    c = defaultdict(int)
    for v in values:
        c[v] += 1
    n = len(values)
    return ", ".join(f"{k} {c[k]}/{n}" for k in sorted(c, key=lambda k: -c[k]))


def median_run(runs):
    """The run whose final loss is the median of the group's."""
    losses = [r["run"].data.metrics.get("final_loss", math.nan) for r in runs]
    order = np.argsort(np.where(np.isfinite(losses), losses, np.inf))
    return runs[int(order[(len(order) - 1) // 2])]


def probes_of(runs) -> list[str]:
    found = []
    for probe in (*FP_PROBES, "condensation", "ntk"):
        if any(any(k.startswith(f"{probe}/") for k in r["run"].data.metrics) for r in runs):
            found.append(probe)
    return found


def claim_of(runs):
    t = runs[0]["run"].data.tags
    if not t.get("fpdsl.claim.tag"):
        return None
    return {"statement": t.get("fpdsl.claim.statement", ""), "tag": t["fpdsl.claim.tag"],
            "expect": t.get("fpdsl.claim.expect", ""), "source": t.get("fpdsl.claim.source", "")}


def reproduced(run, claim) -> bool:
    value = run.data.tags.get(claim["tag"], run.data.metrics.get(claim["tag"]))
    return value is not None and str(value).startswith(claim["expect"])


# -- tables -----------------------------------------------------------------------------------
def group_rows(g) -> list[str]:
    runs = g["runs"]
    n = len(runs)
    rows = []
    losses = [r["run"].data.metrics.get("final_loss") for r in runs]
    for probe in probes_of(runs):
        ms = [r["run"].data.metrics for r in runs]
        ts = [r["run"].data.tags for r in runs]
        if probe in FP_PROBES:
            conv = _converge_summary(runs, probe)
            rows.append(
                f"| {g['name']} | {probe} | {counts([t.get(f'{probe}/fp_verdict', '?') for t in ts])} | "
                f"{_evidence_count(ms, probe)} | "
                f"{fmt_ci([m.get(f'{probe}/fp_order') for m in ms])} | {fmt_ci([m.get(f'{probe}/fp_order_halving') for m in ms])} | "
                f"{counts([t.get(f'{probe}/bias_verdict', '—') for t in ts])} | {conv} | {fmt_ci(losses, '.2e')} | {n} |"
            )
        elif probe == "condensation":
            rows.append(
                f"| {g['name']} | condensation | {counts([t.get('condensation/verdict', '?') for t in ts])} | "
                f"orientations {fmt_ci([m.get('condensation/final_n_orientations') for m in ms], '.1f')} "
                f"(random {fmt_ci([m.get('condensation/baseline_orientations') for m in ms], '.1f')}) | "
                f"coverage {fmt_ci([m.get('condensation/final_coverage') for m in ms], '.2f')} | "
                f"grown {fmt_ci([m.get('condensation/final_n_grown') for m in ms], '.0f')} | "
                f"loss drop {fmt_ci([m.get('loss_drop') for m in ms], '.3f')} | "
                f"steps {fmt_ci([m.get('steps') for m in ms], '.0f')} | {fmt_ci(losses, '.2e')} | {n} |"
            )
        elif probe == "ntk":
            kinds = counts(["exact" if m.get("ntk/exact") == 1.0 else "reference" for m in ms])
            rows.append(
                f"| {g['name']} | ntk | {counts([t.get('ntk/verdict', '?') for t in ts])} | "
                f"agreement {fmt_ci([m.get('ntk/agreement') for m in ms], '.2f')} (GD prediction: {kinds}) | "
                f"predicted: {counts([t.get('ntk/predicted_verdict', '?') for t in ts])} | "
                f"gradient flow {fmt_ci([m.get('ntk/agreement_flow') for m in ms], '.2f')} | "
                f"kernel drift {fmt_ci([m.get('ntk/final_drift') for m in ms], '.3f')} | "
                f"{_converge_summary(runs, 'ntk', 'predicted_converge_step')} | {fmt_ci(losses, '.2e')} | {n} |"
            )
    return rows


def _evidence_count(ms, probe) -> str:
    """How much each verdict rests on: frequencies converged of how many, or (filtering) the δ
    values at which e_high fell measurably, of those kept."""
    if probe == "filtering":
        return (f"e_high fell at {fmt_ci([m.get('filtering/n_deltas_e_high_fell') for m in ms], '.1f')} of "
                f"{int(ms[0].get('filtering/n_deltas', 0) or 0)} δ")
    return (f"{fmt_ci([m.get(f'{probe}/n_converged') for m in ms], '.1f')} of "
            f"{int(ms[0].get(f'{probe}/n_freqs', 0) or 0)} converged")


def _converge_summary(runs, probe, name="converge_step") -> str:
    """Converge step per frequency: median [min–max] over the seeds that converged it, and how many did."""
    keys = sorted({k for r in runs for k in r["run"].data.metrics if k.startswith(f"{probe}/{name}/")},
                  key=lambda k: _freq_of(k))
    parts = []
    for k in keys:
        v = np.array([r["run"].data.metrics.get(k, math.nan) for r in runs], dtype=float)
        ok = v[np.isfinite(v)]
        label = k.rsplit("/", 1)[1]
        if ok.size == 0:
            parts.append(f"{label}: never")
        elif ok.size == 1 or ok.min() == ok.max():
            parts.append(f"{label}: {ok[0]:.0f} ({ok.size}/{len(v)})")
        else:
            parts.append(f"{label}: {np.median(ok):.0f} [{ok.min():.0f}–{ok.max():.0f}] ({ok.size}/{len(v)})")
    return "; ".join(parts) if parts else "—"


def _freq_of(key):
    m = re.search(r"([0-9.]+)$", key.rsplit("/", 1)[1])
    return float(m.group(1)) if m else 0.0


def claims_table(gs) -> str:
    rows = ["| claim (source) | experiment | re-obtained over seeds | evidence |", "|---|---|---|---|"]
    for g in gs:
        claim = claim_of(g["runs"])
        if claim is None:
            continue
        runs = g["runs"]
        k = sum(reproduced(r["run"], claim) for r in runs)
        verdicts = counts([str(r["run"].data.tags.get(claim["tag"], r["run"].data.metrics.get(claim["tag"], "?")))
                           for r in runs])
        probe = claim["tag"].split("/", 1)[0]
        ms = [r["run"].data.metrics for r in runs]
        if probe in FP_PROBES:
            evidence = (f"{_evidence_count(ms, probe)}; order {fmt_ci([m.get(f'{probe}/fp_order') for m in ms])}, "
                        f"halving order {fmt_ci([m.get(f'{probe}/fp_order_halving') for m in ms])}")
        elif probe == "condensation":
            evidence = (f"{fmt_ci([m.get('condensation/final_n_orientations') for m in ms], '.1f')} orientations over "
                        f"{fmt_ci([m.get('condensation/final_n_grown') for m in ms], '.0f')} grown neurons "
                        f"(random: {fmt_ci([m.get('condensation/baseline_orientations') for m in ms], '.1f')}); "
                        f"coverage {fmt_ci([m.get('condensation/final_coverage') for m in ms], '.2f')}")
        elif probe == "ntk":
            evidence = f"agreement {fmt_ci([m.get('ntk/agreement') for m in ms], '.2f')}"
        else:
            evidence = ""
        what = "**yes**" if k == len(runs) else ("**no**" if k == 0 else "**partly**")
        rows.append(f"| {claim['statement']} ({claim['source']}) | `{g['name']}` | {what}: {k}/{len(runs)} "
                    f"({verdicts}) | {evidence} |")
    return "\n".join(rows)


# -- figures ----------------------------------------------------------------------------------
def _grid(n, width=4.2, height=2.8):
    from matplotlib.figure import Figure

    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols + 1.2, height * rows + 0.8), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def spectrum_grid(gs, probe="spectrum"):
    have = [(g, median_run(g["runs"])) for g in gs if any(f"{probe}/steps" in r["history"] for r in g["runs"])]
    have = [(g, e) for g, e in have if f"{probe}/steps" in e["history"]]
    if not have:
        return None
    fig, axes = _grid(len(have))
    for ax, (g, e) in zip(axes, have):
        h, t = e["history"], e["run"].data.tags
        variant = t.get(f"{probe}/delta_variant", "complex")
        mesh = heatmap_on(ax, h[f"{probe}/steps"], h[f"{probe}/delta_{variant}"], h[f"{probe}/peaks"], 0.1, 1.0, "RdBu_r")
        verdicts = counts([r["run"].data.tags.get(f"{probe}/fp_verdict", "?") for r in g["runs"]])
        ax.set_title(f"{g['name']}\n{verdicts}", fontsize=8)
        ax.set_ylabel("peak k")
    fig.colorbar(mesh, ax=list(axes), label="Δ_F (clipped to [0.1, 1])", shrink=0.8)
    fig.suptitle(f"{probe}: Δ_F at the target's peaks, the median run (by final loss) of each group, one colour scale")
    return fig


def amplitude_grid(gs):
    have = [(g, median_run(g["runs"])) for g in gs]
    have = [(g, e) for g, e in have if "spectral_amplitude/steps" in e["history"]]
    if not have:
        return None
    fig, axes = _grid(len(have))
    for ax, (g, e) in zip(axes, have):
        h = e["history"]
        order = np.argsort(h["spectral_amplitude/frequencies"])
        mesh = heatmap_on(ax, h["spectral_amplitude/steps"], h["spectral_amplitude/amplitude"][:, order],
                          [f"{f:g}" for f in h["spectral_amplitude/frequencies"][order]], 0.0, 1.0, "viridis")
        verdicts = counts([r["run"].data.tags.get("spectral_amplitude/bias_verdict", "?") for r in g["runs"]])
        ax.set_title(f"{g['name']}\nbias {verdicts}", fontsize=8)
        ax.set_ylabel("frequency k")
    fig.colorbar(mesh, ax=list(axes), label="2|ĥ(k)|/(n A) (clipped to [0, 1])", shrink=0.8)
    fig.suptitle("spectral bias: normalised amplitude per target frequency (median run of each group)")
    return fig


def filtering_curves(gs):
    have = [(g, median_run(g["runs"])) for g in gs]
    have = [(g, e) for g, e in have if "filtering/steps" in e["history"]]
    if not have:
        return None
    fig, axes = _grid(len(have), width=4.6, height=3.2)
    for ax, (g, e) in zip(axes, have):
        h = e["history"]
        steps = h["filtering/steps"] + 1
        for i, d in enumerate(h["filtering/deltas"]):
            (line,) = ax.plot(steps, h["filtering/e_low"][:, i], label=f"δ={d:.3g}")
            ax.plot(steps, h["filtering/e_high"][:, i], "--", color=line.get_color())
        ax.set_xscale("log")
        ax.set_ylim(0, 1.05)  # errors above 1 (a near-identity kernel) are off the chart, not its scale
        ax.set_title(f"{g['name']}\n{counts([r['run'].data.tags.get('filtering/fp_verdict', '?') for r in g['runs']])}",
                     fontsize=8)
        ax.set_xlabel("step + 1")
        ax.set_ylabel("relative error")
        ax.legend(fontsize=6, title="e_low solid, e_high dashed", title_fontsize=6)
    fig.suptitle("filtering method: e_low (solid) falls before e_high (dashed), median run of each group")
    return fig


def condensation_grid(gs):
    have = [(g, median_run(g["runs"])) for g in gs]
    have = [(g, e) for g, e in have if "condensation/features_last" in e["history"]]
    if not have:
        return None
    from fpdsl.condensation import block_order, cosine_similarity

    fig, axes = _grid(len(have), width=3.0, height=3.3)
    for ax, (g, e) in zip(axes, have):
        h = e["history"]
        u = h["condensation/features_last"]
        if "condensation/grown" in h and h["condensation/grown"].sum() >= 2:
            u = u[h["condensation/grown"].astype(bool)]
        s = cosine_similarity(u)
        idx = block_order(s)
        mesh = ax.imshow(s[np.ix_(idx, idx)], cmap="RdBu_r", vmin=-1, vmax=1)
        verdict = e["run"].data.tags.get("condensation/verdict", "?")
        n = int(e["run"].data.metrics.get("condensation/final_n_orientations", 0))
        ax.set_title(f"{g['name']}\n{verdict}\n{n} orientation(s), {len(u)} grown", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(mesh, ax=list(axes), label="cosine similarity", shrink=0.8)
    fig.suptitle("condensation: grown neurons' features (w_k, b_k) at the last step (median run of each group)")
    return fig


def ntk_grid(gs):
    """Per group (its median run): Δ_F measured and predicted from the NTK, one colour scale."""
    have = [(g, median_run(g["runs"])) for g in gs]
    have = [(g, e) for g, e in have if "ntk/delta_predicted" in e["history"]]
    if not have:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.5, 1.9 * len(have) + 1.0), layout="constrained")
    axes = fig.subplots(len(have), 2, squeeze=False, sharex="row")
    for (ax_m, ax_p), (g, e) in zip(axes, have):
        h, m = e["history"], e["run"].data.metrics
        for ax, key, label in ((ax_m, "ntk/delta_measured", "measured"), (ax_p, "ntk/delta_predicted", "predicted")):
            mesh = heatmap_on(ax, h["ntk/steps"], h[key], h["ntk/peaks"], 0.1, 1.0, "RdBu_r")
            ax.set_title(f"{g['name']}: {label}" + (f" (agreement {m.get('ntk/agreement', math.nan):.2f})"
                                                    if label == "predicted" else ""), fontsize=8)
        ax_m.set_ylabel("peak k")
    fig.colorbar(mesh, ax=axes.ravel().tolist(), label="Δ_F (clipped to [0.1, 1])", shrink=0.6)
    fig.suptitle("Δ_F measured beside the NTK prediction (median run of each group)")
    return fig


# -- building -------------------------------------------------------------------------------
def build(uri, experiments, tags, out: Path, log=True, readme: Path | None = None):
    from fpdsl.store import Store

    store = Store(uri)
    client = store.client
    entries = collect(client, experiments, tags)
    if not entries:
        raise SystemExit(f"fpdsl.report: error: no ended runs in {uri} for experiments {experiments or 'all'}")
    gs = groups(entries)
    out.mkdir(parents=True, exist_ok=True)
    figures = {
        "spectrum_grid.png": ("Δ_F heat maps (1-D DFT method)", spectrum_grid(gs)),
        "projection_grid.png": ("Δ_F along the first principal component (projection method)", spectrum_grid(gs, "projection")),
        "filtering.png": ("e_low / e_high (filtering method)", filtering_curves(gs)),
        "spectral_amplitude.png": ("Spectral bias: normalised amplitudes", amplitude_grid(gs)),
        "condensation.png": ("Condensation: cosine similarity of grown neurons' features", condensation_grid(gs)),
        "ntk.png": ("Theory beside experiment: Δ_F predicted from the NTK", ntk_grid(gs)),
    }
    claims = claims_table(gs)
    lines = [
        "# fpdsl report", "",
        f"{len(entries)} runs in {len(gs)} groups from `{uri}` (experiments: "
        f"{', '.join(sorted({e['experiment'] for e in entries}))}), built {time.strftime('%Y-%m-%d %H:%M')}. "
        "A group is the runs that differ only in their seed. Verdicts, orders and condensation counts are defined "
        "in docs/science.md; ± is a 95 % t-interval over the seeds; +1 orders mean low frequencies first.", "",
        "## Claims", "", claims, "",
        "## Every group", "",
        "| group | probe | verdicts over seeds | evidence | order at ε | halving order | bias | converge step per frequency | final loss | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for g in gs:
        lines += group_rows(g)
    lines.append("")
    for name, (title, fig) in figures.items():
        if fig is None:
            continue
        fig.savefig(out / name, dpi=110)
        lines += [f"## {title}", "", f"![{title}]({name})", ""]
    (out / "report.md").write_text("\n".join(lines))
    (out / "claims.md").write_text(claims + "\n")
    if readme is not None:
        update_readme(readme, claims, out)
    if log:
        run = client.create_run(store.experiment_id(REPORT_EXPERIMENT), run_name=f"report-{time.strftime('%Y%m%d-%H%M%S')}",
                                tags={"fpdsl.kind": "report", "fpdsl.experiments": ",".join(experiments or [])})
        client.log_artifacts(run.info.run_id, str(out), "report")
        client.set_terminated(run.info.run_id)
    return out


def update_readme(readme: Path, claims: str, out: Path) -> None:
    """Replace the README's reproduce table (between its markers) with the generated one."""
    text = readme.read_text()
    start, end = MARKERS
    if start not in text or end not in text:
        raise SystemExit(f"fpdsl.report: error: {readme} has no {start} … {end} section to fill")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    note = f"<!-- generated by python -m fpdsl.report from {out}; do not edit by hand -->"
    readme.write_text(f"{head}{start}\n{note}\n\n{claims}\n\n{end}{tail}")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m fpdsl.report", description=__doc__.splitlines()[0])
    ap.add_argument("--uri", default=os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db", help="MLflow tracking URI")
    ap.add_argument("--experiment", "-e", action="append", help="experiment name (repeatable; default: all)")
    ap.add_argument("--tag", action="append", default=[], help="KEY=VALUE: only runs with this tag (repeatable)")
    ap.add_argument("--out", default=None, help="output folder (default: reports/<time>)")
    ap.add_argument("--readme", default=None, help="README file whose reproduce table to replace")
    ap.add_argument("--no-log", action="store_true", help="do not log the report as an MLflow run")
    a = ap.parse_args(argv)
    tags = {}
    for t in a.tag:
        k, sep, v = t.partition("=")
        if not sep:
            ap.error(f"--tag {t!r}: write KEY=VALUE")
        tags[k] = v
    out = Path(a.out or f"reports/{time.strftime('%Y%m%d-%H%M%S')}")
    build(a.uri, a.experiment, tags, out, log=not a.no_log, readme=Path(a.readme) if a.readme else None)
    print(f"fpdsl.report: {out / 'report.md'}")


if __name__ == "__main__":
    main()
