"""`sweeps/<name>/report.html`: the `tunelab report` page over every trial, with the sweep's own
views on top: the ranked table, the objective per trial, the objective by step (what the pruner
saw), parameter importance (Optuna's fANOVA), each parameter against the objective, and the loss
curves of the best trials. Plots are matplotlib PNGs inline, like the report's: no scripts.
"""

from __future__ import annotations

import base64
import io
import math
import os
from pathlib import Path
from typing import Any

from tunelab.sweep import gateway, space
from tunelab.sweep.resolved import Sweep
from tunelab.sweep.results import Row, best, counts, fmt, headers, rel

TOP = 5  # trials whose loss curves are drawn
STATE_STYLE = {
    "completed": ("o", "full"),
    "pruned": ("o", "none"),
    "running": ("^", "full"),
    "interrupted": ("^", "none"),
    "killed": ("^", "none"),
}

SECTION = """
<style>tr.failed td { color: #777; background: #f6f6f6; } tr.stopped td { color: #555; }</style>
<h2 id="sweep">Sweep {{ name }}</h2>
<p class="sub">{{ about }}</p>
{% if best_line %}<p class="verdict" id="sweep-best">{{ best_line }}</p>{% endif %}
<div class="scroll"><table id="sweep-trials">
  <tr>{% for h in header %}<th>{{ h }}</th>{% endfor %}</tr>
  {% for row in rows %}
  <tr class="{{ row.cls }}">{% for c in row.cells %}<td class="{{ c.cls }}">{{ c.text }}</td>{% endfor %}</tr>
  {% endfor %}
</table></div>
<div class="plots" id="sweep-plots">
{% for title, image in plots %}
  {% if image %}<figure><img src="{{ image }}" alt="{{ title }}"></figure>
  {% else %}<figure><span class="gapnote">{{ title }}</span></figure>{% endif %}
{% endfor %}
</div>
<h2 id="trials">Every trial</h2>
<p class="legend">The report of every trial (best first), as <span class="key">tunelab report</span> writes it.</p>
"""


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.tight_layout()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(w: float = 6.4, h: float = 3.4):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(w, h), dpi=100)


def _log_scale(values: list[float]) -> bool:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return bool(v) and min(v) > 0 and max(v) / min(v) > 20


def objective_plot(sweep: Sweep, rows: list[Row]) -> tuple[str, str | None]:
    metric, d = sweep.objectives[0]
    title = f"{metric} per trial"
    pts = [r for r in rows if r.values and r.values[0] is not None and math.isfinite(r.values[0])]
    if not pts:
        return title + ": no trial has a value yet", None
    fig, ax = _figure()
    for state, (marker, fill) in STATE_STYLE.items():
        group = [r for r in pts if r.state == state]
        if group:
            ax.plot(
                [r.number for r in group],
                [r.values[0] for r in group],
                linestyle="none",
                marker=marker,
                fillstyle=fill,
                markersize=7,
                label=state,
            )
    done = sorted((r.number, r.values[0]) for r in pts if r.state == "completed")
    if done:
        pick = min if d == "minimize" else max
        xs, ys, run = [], [], None
        for n, v in done:
            run = v if run is None else pick(run, v)
            xs.append(n)
            ys.append(run)
        ax.step(xs, ys, where="post", color="grey", linewidth=1, label="best so far")
    if _log_scale([r.values[0] for r in pts]):
        ax.set_yscale("log")
    ax.set(title=title + " (pruned: the value at the stop)", xlabel="trial", ylabel=metric)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return title, _png(fig)


def intermediate_plot(sweep: Sweep, study, rows: list[Row]) -> tuple[str, str | None]:
    metric = sweep.metric
    title = f"{metric} at each evaluation"
    by_number = {r.number: r for r in rows}
    trials = [t for t in study.get_trials(deepcopy=False) if t.intermediate_values and t.number in by_number]
    if not trials or len(sweep.objectives) > 1:
        return title + ": no intermediate values reported", None
    fig, ax = _figure()
    for t, colour in zip(trials, gateway.curve_colours(len(trials)), strict=True):
        steps = sorted(t.intermediate_values)
        values = [t.intermediate_values[s] for s in steps]
        r = by_number[t.number]
        ax.plot(
            steps,
            values,
            color=colour,
            linewidth=1.3,
            linestyle="--" if r.state == "pruned" else "-",
            marker="o",
            markersize=2.5,
            label=r.name or str(t.number),
        )
        if r.state == "pruned":
            ax.plot(steps[-1:], values[-1:], color=colour, marker="x", markersize=9, linestyle="none")
    if _log_scale([v for t in trials for v in t.intermediate_values.values()]):
        ax.set_yscale("log")
    ax.set(title=title + " (dashed, x: pruned there)", xlabel="step", ylabel=metric)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(trials) > 6 else 1, frameon=False)
    return title, _png(fig)


def importance_plot(sweep: Sweep, study, rows: list[Row]) -> tuple[str, str | None]:
    title = "parameter importance (fANOVA)"
    done = [r for r in rows if r.state == "completed"]
    varying = [a for a in sweep.axes if len({repr(_axis_value(a, r)) for r in done}) > 1]
    if len(done) < 3 or not varying:
        return title + ": needs at least 3 completed trials that differ in a parameter", None
    import optuna

    target = None if len(sweep.objectives) == 1 else (lambda t: t.values[0])
    try:
        imp = optuna.importance.get_param_importances(
            study,
            evaluator=optuna.importance.FanovaImportanceEvaluator(seed=sweep.spec.seed),
            target=target,
            params=[a.name for a in varying],
        )
    except (ValueError, RuntimeError) as e:
        return f"{title}: {e}", None
    names = list(imp)[::-1]
    fig, ax = _figure(6.4, 0.5 + 0.45 * len(names) + 1)
    ax.barh(names, [imp[n] for n in names], color="#4c72b0")
    for i, n in enumerate(names):
        ax.text(imp[n], i, f" {imp[n]:.2f}", va="center", fontsize=8)
    ax.set(
        title=f"{title}, {len(done)} completed trials", xlabel=f"share of the variance of {sweep.metric}", xlim=(0, 1.1)
    )
    return title, _png(fig)


def _axis_value(axis: space.Axis, r: Row) -> Any:
    if axis.finite:
        key = [r.settings.get(k) for k in axis.keys]
        return next((axis.labels[i] for i, o in enumerate(axis.options) if [o[k] for k in axis.keys] == key), None)
    return r.settings.get(axis.name)


def params_plot(sweep: Sweep, rows: list[Row]) -> tuple[str, str | None]:
    metric = sweep.metric
    title = f"each parameter against {metric}"
    pts = [r for r in rows if r.values and r.values[0] is not None and math.isfinite(r.values[0])]
    if not pts:
        return title + ": no trial has a value yet", None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(sweep.axes)
    cols = min(n, 3)
    fig, axs = plt.subplots(
        math.ceil(n / cols),
        cols,
        figsize=(6.4 if n > 1 else 4.2, 2.8 * math.ceil(n / cols)),
        dpi=100,
        squeeze=False,
        sharey=True,
    )
    for ax in axs.flat[n:]:
        ax.set_visible(False)
    for axis, ax in zip(sweep.axes, axs.flat, strict=False):
        if axis.finite:
            ticks = [
                space.short_value(v) if not isinstance(v, str) or len(v) < 14 else v[:12] + ".."
                for v in [
                    o[axis.keys[0]] if len(axis.keys) == 1 else ",".join(space.short_value(o[k]) for k in axis.keys)
                    for o in axis.options
                ]
            ]
            xs = {label: i for i, label in enumerate(axis.labels)}
            ax.set_xticks(range(len(ticks)), ticks, rotation=20 if max(map(len, ticks)) > 6 else 0, fontsize=8)
        for state, (marker, fill) in STATE_STYLE.items():
            group = [r for r in pts if r.state == state]
            if not group:
                continue
            x = [xs.get(_axis_value(axis, r)) if axis.finite else r.settings.get(axis.name) for r in group]
            ax.plot(
                x,
                [r.values[0] for r in group],
                linestyle="none",
                marker=marker,
                fillstyle=fill,
                markersize=6,
                label=state,
            )
        if not axis.finite and axis.param.log:
            ax.set_xscale("log")
        ax.set_title(axis.name, fontsize=9)
        ax.grid(True, alpha=0.3)
    if _log_scale([r.values[0] for r in pts]):
        axs.flat[0].set_yscale("log")
    axs.flat[0].set_ylabel(metric)
    axs.flat[0].legend(fontsize=7, frameon=False)
    return title, _png(fig)


def pareto_plot(sweep: Sweep, rows: list[Row]) -> tuple[str, str | None]:
    (m1, _), (m2, _) = sweep.objectives[:2]
    title = f"Pareto front: {m1} against {m2}"
    pts = [r for r in rows if r.state == "completed" and len(r.values) >= 2]
    if not pts:
        return title + ": no completed trial", None
    fig, ax = _figure()
    for on, label, style in ((False, "completed", {"color": "#999999"}), (True, "Pareto front", {"color": "#c44e52"})):
        group = sorted((r for r in pts if r.pareto == on), key=lambda r: r.values[0])
        if group:
            ax.plot(
                [r.values[0] for r in group],
                [r.values[1] for r in group],
                marker="o",
                linestyle="-" if on else "none",
                label=label,
                **style,
            )
    ax.set(title=title, xlabel=m1, ylabel=m2)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return title, _png(fig)


def _table(sweep: Sweep, rows: list[Row]) -> tuple[list[str], list[dict]]:
    keys = [k for a in sweep.axes for k in a.keys]
    notes = any(r.reason for r in rows)
    header = [
        "rank",
        "trial",
        *headers(sweep),
        *(m for m, _ in sweep.objectives),
        "state",
        "steps",
        "time s",
        "tokens/s",
        "peak MB",
        *(["note"] if notes else []),
    ]
    out = []
    for r in rows:
        values = r.values + [None] * (len(sweep.objectives) - len(r.values))
        texts = [
            str(r.rank or "-"),
            r.name or str(r.number),
            *(fmt(r.settings.get(k)) for k in keys),
            *(fmt(v) for v in values),
            r.state,
            fmt(r.step),
            fmt(r.duration_s),
            f"{r.tokens_per_s:,.0f}" if r.tokens_per_s else "-",
            f"{r.peak_mb:,.0f}" if r.peak_mb else "-",
            *([r.reason or ""] if notes else []),
        ]
        state_at = 2 + len(keys) + len(values)
        nums = set(range(2, state_at)) | set(range(state_at + 1, state_at + 5))
        cls = "best" if r.rank == 1 else ""
        out.append(
            {
                "cls": {"failed": "failed", "pruned": "stopped"}.get(r.state, ""),
                "cells": [
                    {"text": t, "cls": " ".join(x for x in (cls, "num" if i in nums else "") if x)}
                    for i, t in enumerate(texts)
                ],
            }
        )
    return header, out


def section(sweep: Sweep, study, rows: list[Row], run_paths: list[Path]) -> str:
    from jinja2 import Environment

    c = counts(rows)
    b = best(rows)
    about = (
        f"{sweep.spec.method} search over {', '.join(a.name for a in sweep.axes)}; "
        f"{len(rows)} of {sweep.budget} trials ("
        + ", ".join(f"{n} {s}" for s, n in sorted(c.items()))
        + f"); pruner {sweep.spec.pruner.name}; "
        f"objective {', '.join(f'{m} ({d})' for m, d in sweep.objectives)}; storage {sweep.storage_shown()}"
    )
    best_line = None
    if b is not None:
        shown = ", ".join(f"{k}={space.short_value(v)}" for k, v in b.settings.items())
        best_file = rel(sweep.best_file)
        best_line = (
            f"Best: trial {b.name} ({shown}), {sweep.metric} {fmt(b.values[0] if b.values else None)}; "
            f"its config: {best_file} (tunelab train {best_file})"
        )
    plots = [
        objective_plot(sweep, rows),
        intermediate_plot(sweep, study, rows),
        importance_plot(sweep, study, rows),
        params_plot(sweep, rows),
    ]
    if len(sweep.objectives) > 1:
        plots.append(pareto_plot(sweep, rows))
    top = [p for r in rows if r.state == "completed" and r.name for p in [sweep.trials_dir / r.name] if p in run_paths][
        :TOP
    ]
    if top:
        plots += gateway.curves(
            top,
            [
                ("loss", f"training loss, top {len(top)} trials", "loss", True, True),
                ("eval_loss", f"eval loss, top {len(top)} trials", "loss", True, False),
            ],
        )
    header, table_rows = _table(sweep, rows)
    env = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
    return env.from_string(SECTION).render(
        name=sweep.name, about=about, best_line=best_line, header=header, rows=table_rows, plots=plots
    )


def write_report(sweep: Sweep, study, rows: list[Row], max_prompts: int = 6) -> Path | None:
    """Write report.html (atomically); None when no trial has written anything yet."""
    run_paths = [sweep.trials_dir / r.name for r in rows if r.name and gateway.is_run_dir(sweep.trials_dir / r.name)]
    if not run_paths:
        return None
    try:
        page = gateway.report_html(run_paths, max_prompts)
    except gateway.TunelabError:
        return None  # no trial has logged a step yet
    html = splice(page, section(sweep, study, rows, run_paths), sweep.name)
    out = sweep.report_file
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out)
    return out


def splice(page: str, fragment: str, name: str) -> str:
    """The sweep's section into the report page: first, above the report's list of runs."""
    page = page.replace("<h1>tunelab report</h1>", f"<h1>tunelab sweep {_escape(name)}</h1>", 1)
    for anchor in ('<table id="runs">', '<h2 id="metrics">', "</body>"):
        if anchor in page:
            i = page.index(anchor)
            return page[:i] + fragment + page[i:]
    return page + fragment


def _escape(text: str) -> str:
    from markupsafe import escape

    return str(escape(text))
