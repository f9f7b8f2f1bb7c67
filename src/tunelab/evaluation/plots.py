"""Line plots of metrics.jsonl series, one line per run, as inline base64 PNG for the HTML report.

PNG rather than inline SVG: matplotlib's SVG ids (clip paths) may repeat across figures embedded
in one page, and a PNG data URI is one `<img>` any browser shows without scripts or fonts.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

from tunelab.runs.contents import RunData

# (metrics.jsonl key, title, y label, log scale, smoothed: the per-step readings are noisy)
CURVES = [
    ("loss", "training loss", "loss", True, True),
    ("eval_loss", "eval loss", "loss", True, False),
    ("learning_rate", "learning rate", "learning rate", False, False),
    ("tokens_per_s", "training throughput", "tokens / s", False, True),
    ("samples_exact_match", "sample exact match", "exact match", False, False),
    ("samples_chrf", "sample chrF", "chrF", False, False),
]
# Preference runs (training.method dpo / kto) also log these; drawn only when some run has them.
PREFERENCE_CURVES = [
    ("preference_accuracy", "held-out preference accuracy (chosen likelier)", "share of pairs", False, False),
    ("preference_margin", "held-out log-probability margin (chosen - rejected)", "nats", False, False),
    ("rewards/margins", "reward margin (training batches)", "beta x log-ratio", False, True),
    ("rewards/accuracies", "reward accuracy (training batches)", "share of pairs", False, True),
    ("eval_rewards/accuracies", "reward accuracy (eval)", "share of pairs", False, False),
]


@dataclass
class Plot:
    key: str
    title: str
    image: str | None  # data URI, None when no run logged the series
    missing: list[str]  # runs with no points of this series


SMOOTH_ABOVE = 40  # points; fewer are drawn as they are, with markers


def smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average, bias-corrected so the first points are not pulled towards zero."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight**i))
    return out


def colours(n: int) -> list:
    """Distinct colours for n runs (tab10 up to ten, then tab20)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def curve(runs: list[RunData], key: str, title: str, ylabel: str, log: bool = False, smoothed: bool = False) -> Plot:
    """One figure with a line per run that logged `key`; runs without it are listed, not drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [(run, *run.series(key)) for run in runs]
    missing = [run.name for run, steps, _ in series if not steps]
    if len(missing) == len(runs):
        return Plot(key, title, None, missing)
    fig, ax = plt.subplots(figsize=(6.4, 3.4), dpi=100)
    try:
        for (run, steps, values), colour in zip(series, colours(len(runs)), strict=True):
            if smoothed and len(steps) > SMOOTH_ABOVE:  # faint raw readings under a bold running mean
                ax.plot(steps, values, color=colour, linewidth=0.8, alpha=0.25)
                ax.plot(steps, smooth(values), label=run.name, color=colour, linewidth=1.6)
            elif steps:
                ax.plot(
                    steps,
                    values,
                    label=run.name,
                    color=colour,
                    linewidth=1.4,
                    marker="o" if len(steps) <= SMOOTH_ABOVE else None,
                    markersize=3,
                )
        if log and all(v > 0 for _, _, vals in series for v in vals):
            ax.set_yscale("log")
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, ncol=2 if len(runs) > 5 else 1, frameon=False)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return Plot(key, title, "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), missing)


def all_curves(runs: list[RunData]) -> list[Plot]:
    extra = [spec for spec in PREFERENCE_CURVES if any(run.series(spec[0])[0] for run in runs)]
    return [curve(runs, *spec) for spec in CURVES + extra]
