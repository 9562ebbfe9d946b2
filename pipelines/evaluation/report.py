"""Tables and figures for evaluations and the generalization protocol.

Everything here is pure (metrics dicts / matrices in, files or text out): no Ray,
no model, so it is testable in milliseconds. Figures use matplotlib's Agg backend.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from rich.console import Console
from rich.table import Table

from pipelines.figures import plt, save_figure


# --------------------------------------------------------------------------- single evaluation
def eval_table_rows(metrics: dict) -> list[tuple[str, str, int, int, float, float, float]]:
    """(group, name, n, correct, accuracy, ci_lo, ci_hi) rows: overall, then each grouping."""
    out = []
    o = metrics["overall"]
    out.append(("overall", "all", o["n"], o["correct"], o["accuracy"], *o["ci95"]))
    for key, label in (("by_modality", "modality"), ("by_question_type", "question type"), ("by_source", "source")):
        for name, c in metrics.get(key, {}).items():
            out.append((label, name, c["n"], c["correct"], c["accuracy"], *c["ci95"]))
    return out


def print_eval_table(metrics: dict, title: str = "evaluation", console=None) -> None:
    """A rich table of accuracies with 95% Wilson intervals, then format/unparsable/skipped."""
    console = console or Console()
    t = Table(title=title)
    for col, just in (("group", "left"), ("name", "left"), ("n", "right"), ("correct", "right"),
                      ("accuracy", "right"), ("95% CI", "right")):
        t.add_column(col, justify=just)
    last = None
    for group, name, n, k, acc, lo, hi in eval_table_rows(metrics):
        if last is not None and group != last:
            t.add_section()
        last = group
        t.add_row(group, name, str(n), str(k), f"{100 * acc:.1f}%", f"[{100 * lo:.1f}, {100 * hi:.1f}]")
    console.print(t)
    sk = metrics.get("skipped", {}).get("count", 0)
    console.print(f"format rate {100 * metrics.get('format_rate', 0.0):.1f}%  |  unparsable {metrics.get('unparsable', 0)}"
                  f"  |  skipped {sk}  |  {metrics.get('n', 0)} prompts in {metrics.get('seconds', 0.0):.1f} s "
                  f"({metrics.get('prompts_per_s', 0.0):.2f} prompts/s)")
    f = metrics.get("faithfulness")
    if f:  # rewards/faithfulness.py: the reasoning-answer link
        console.print(f"reasoning names the chosen option: {100 * f['faithful_correct']:.1f}% of {f['n_correct']} "
                      f"correct  |  names another option: {100 * f['other_named_wrong']:.1f}% of {f['n_wrong']} wrong")


def plot_accuracy_bars(cells: dict[str, dict], path: str | Path, title: str,
                       overall: Optional[dict] = None) -> Optional[Path]:
    """Bar chart of accuracy per group with Wilson 95% error bars and n under each bar."""
    if not cells:
        return None
    names = list(cells)
    acc = [100 * cells[k]["accuracy"] for k in names]
    lo = [100 * (cells[k]["accuracy"] - cells[k]["ci95"][0]) for k in names]
    hi = [100 * (cells[k]["ci95"][1] - cells[k]["accuracy"]) for k in names]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(names) + 2), 4.2))
    bars = ax.bar(range(len(names)), acc, yerr=[lo, hi], capsize=4, color="#4C72B0", alpha=0.9)
    for b, k, a in zip(bars, names, acc):
        ax.text(b.get_x() + b.get_width() / 2, 1.5, f"{a:.1f}%\nn={cells[k]['n']}", ha="center", va="bottom",
                fontsize=8, color="white" if a > 12 else "black")
    if overall:
        ax.axhline(100 * overall["accuracy"], color="#C44E52", ls="--", lw=1,
                   label=f"overall {100 * overall['accuracy']:.1f}%")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=9)
    ax.set_ylim(0, 105)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    return save_figure(fig, path)


# --------------------------------------------------------------------------- protocol matrices
def _fmt(v: Optional[float], pct: bool = True, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    x = 100 * v if pct else v
    return f"{x:+.1f}" if signed else f"{x:.1f}"


def markdown_table(row_names: Sequence[str], col_names: Sequence[str], values: dict, *, signed: bool = False,
                   n: Optional[dict] = None, corner: str = "train \\ test") -> str:
    """A Markdown table: ``values[row][col]`` as percentages; a trailing 'n' row from ``n[col]``."""
    lines = ["| " + corner + " | " + " | ".join(col_names) + " |",
             "| --- | " + " | ".join("---:" for _ in col_names) + " |"]
    for r in row_names:
        cells = [_fmt(values.get(r, {}).get(c), signed=signed) for c in col_names]
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    if n:
        lines.append("| *n (test)* | " + " | ".join(str(n.get(c, "–")) for c in col_names) + " |")
    return "\n".join(lines)


def plot_heatmap(row_names: Sequence[str], col_names: Sequence[str], values: dict, path: str | Path, title: str,
                 *, diverging: bool = False, xlabel: str = "test domain", ylabel: str = "train domain") -> Path:
    """Annotated heatmap of ``values[row][col]`` (fractions, shown in %); the paper's figure style."""
    data = np.full((len(row_names), len(col_names)), np.nan)
    for i, r in enumerate(row_names):
        for j, c in enumerate(col_names):
            v = values.get(r, {}).get(c)
            if v is not None:
                data[i, j] = 100 * v
    fig, ax = plt.subplots(figsize=(1.0 * len(col_names) + 3, 0.6 * len(row_names) + 2.2))
    if diverging:
        m = np.nanmax(np.abs(data)) if np.isfinite(data).any() else 1.0
        m = m if m > 0 else 1.0
        im = ax.imshow(data, cmap="RdBu_r", vmin=-m, vmax=m, aspect="auto")
    else:
        im = ax.imshow(data, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    fig.colorbar(im, ax=ax, label="improvement (points)" if diverging else "accuracy (%)")
    for i in range(len(row_names)):
        for j in range(len(col_names)):
            v = data[i, j]
            if np.isfinite(v):
                txt = f"{v:+.1f}" if diverging else f"{v:.1f}"
                if diverging:
                    color = "white" if abs(v) > 0.6 * m else "black"
                else:
                    color = "black" if v > 60 else "white"
                ax.text(j, i, txt, ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(len(col_names)))
    ax.set_xticklabels(col_names, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(row_names)))
    ax.set_yticklabels(row_names, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return save_figure(fig, path)


def plot_grouped_bars(row_names: Sequence[str], col_names: Sequence[str], values: dict, path: str | Path,
                      title: str) -> Path:
    """One group of bars per test domain, one bar per training domain (base included)."""
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(col_names) + 3), 4.5))
    width = 0.8 / max(1, len(row_names))
    x = np.arange(len(col_names))
    cmap = plt.get_cmap("tab10" if len(row_names) <= 10 else "tab20")
    for i, r in enumerate(row_names):
        ys = [100 * v if (v := values.get(r, {}).get(c)) is not None else 0.0 for c in col_names]
        ax.bar(x + (i - (len(row_names) - 1) / 2) * width, ys, width, label=r,
               color="#7f7f7f" if r == "base" else cmap(i % cmap.N))
    ax.set_xticks(x)
    ax.set_xticklabels(col_names, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("accuracy (%)")
    ax.set_xlabel("test domain")
    ax.set_title(title)
    ax.legend(title="trained on", fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return save_figure(fig, path)
