"""Run-folder reports: metrics JSON, a markdown report, PNG plots, and rich tables for the terminal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gaflow.evaluation.inputs import describe_reads, reads_line
from gaflow.io import atomic_write_json, atomic_write_text


def _pct(x: float) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{100 * x:.1f}"


def _lift(lift: float, ci: list[float]) -> str:
    return f"{100 * lift:+.1f} [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"


def _is_clustered(block: dict) -> bool:
    """Some arm of this block has episodes sharing an initial state: its clustered numbers lead."""
    return any(s.get("leads_with") == "clustered" for s in block.values())


def _row(stats: dict, clustered: bool = False) -> list[str]:
    lo, hi = stats["ci95"]
    cells = [str(stats["n"]), f"{_pct(stats['rate'])} [{_pct(lo)}, {_pct(hi)}]"]
    if "lift" in stats:
        cells += [_lift(stats["lift"], stats["lift_ci95"]),
                  f"{stats['fail_to_success']}↑ {stats['success_to_fail']}↓", f"{stats['mcnemar_p']:.3g}"]
    else:
        cells += ["(baseline)", "", ""]
    if clustered:
        c = stats["clustered"]
        cells += [str(c["clusters"]), f"[{_pct(c['ci95'][0])}, {_pct(c['ci95'][1])}]"]
        cells += [_lift(stats["lift"], c["lift_ci95"]), f"{c['p_value']:.3g}"] if "lift" in stats else ["", ""]
    g = stats.get("guidance")
    cells += [f"{stats['mean_length']:.0f}", f"{stats['chunk_latency_ms']:.1f}",
              f"{g['ratio_median']:.3g}" if g else "", f"{g['gate_mean']:.2f}" if g else ""]
    return cells


HEADER = ["n", "success% [CI]", "lift [CI]", "flips", "p", "len", "ms", "Δv/v", "gate"]
CLUSTERED_HEADER = ["states", "success CI (clustered)", "lift [CI] (clustered)", "p (clustered)"]
LEGEND = ("success% with 95% Wilson CI; lift in points vs unguided with paired-bootstrap 95% CI; flips = fail→success ↑ "
          "and success→fail ↓; p = exact McNemar; len = mean episode length; ms = per-chunk sampling latency; "
          "Δv/v = median ‖applied guidance‖/‖velocity‖; gate = mean uncertainty gate")
CLUSTERED_LEGEND = ("episodes repeat initial states (states = distinct initial states < n), so read the clustered "
                    "columns: 95% CIs from a bootstrap over initial states, p from a sign-flip test on per-state paired "
                    "differences; the Wilson/bootstrap/McNemar columns count repeats as independent and overstate "
                    "significance")


def _header(clustered: bool) -> list[str]:
    return HEADER[:5] + CLUSTERED_HEADER + HEADER[5:] if clustered else HEADER


def legend(metrics: dict) -> str:
    blocks = [metrics["pooled"], *metrics["per_task"].values()]
    return LEGEND + ("; " + CLUSTERED_LEGEND if any(_is_clustered(b) for b in blocks) else "")


# The terminal view is narrower than report.md: it must stay readable in an 80-column terminal. Headline columns
# (rate, lift, flips, p) get one table per scope — the pooled scope only when there are several tasks, since with
# one task it is that task — and the per-arm diagnostics (length, latency, guidance) one small pooled table.
# Where initial states repeat, the clustered CIs and p lead, so the terminal shows those; report.md has both.
TERMINAL_HEADER = ["n", "success %\n[95% CI]", "lift, points\n[95% CI]", "flips", "p"]
TERMINAL_DIAGNOSTICS = ["len", "ms", "Δv/v", "gate"]
TERMINAL_CLUSTERED_NOTE = ("where initial states repeat (states < n), CIs and p come from a bootstrap over initial "
                           "states and a sign-flip test on per-state paired differences (report.md has both)")


def _terminal_table(title: str, header: list[str]) -> Table:
    # No vertical borders, no edge padding and two spaces between columns: the box-drawing columns of a default
    # table are what an 80-column terminal cannot spare. fold (not the default ellipsis): a cell still too wide
    # wraps instead of losing digits. The title is escaped: "eval [test]" is text, not rich markup.
    table = Table(title=escape(title), box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    table.add_column("arm", overflow="fold")
    for h in header:
        table.add_column(h, justify="right", overflow="fold")
    return table


def _headline_row(stats: dict, clustered: bool) -> list[str]:
    c = stats["clustered"] if clustered else None
    lo, hi = c["ci95"] if c else stats["ci95"]
    cells = [str(stats["n"])] + ([str(c["clusters"])] if c else []) + [f"{_pct(stats['rate'])} [{_pct(lo)}, {_pct(hi)}]"]
    if "lift" not in stats:
        return cells + ["baseline", "", ""]
    return cells + [_lift(stats["lift"], c["lift_ci95"] if c else stats["lift_ci95"]),
                    f"{stats['fail_to_success']}↑ {stats['success_to_fail']}↓",
                    f"{c['p_value'] if c else stats['mcnemar_p']:.3g}"]


def rich_tables(metrics: dict, title: str) -> list[Table]:
    """The terminal view of ``metrics``: a headline table per scope, then the pooled per-arm diagnostics."""
    scopes = list(metrics["per_task"].items())
    if len(scopes) != 1:
        scopes = [("pooled", metrics["pooled"]), *scopes]
    tables = []
    for scope, block in scopes:
        clustered = _is_clustered(block)
        header = TERMINAL_HEADER[:1] + ["states"] + TERMINAL_HEADER[1:] if clustered else TERMINAL_HEADER
        table = _terminal_table(f"{title} — {scope}" + (" (clustered by initial state)" if clustered else ""), header)
        for arm, stats in block.items():
            table.add_row(arm, *_headline_row(stats, clustered))
        tables.append(table)
    diagnostics = _terminal_table(f"{title} — {scopes[0][0]} diagnostics", TERMINAL_DIAGNOSTICS)
    for arm, stats in scopes[0][1].items():
        g = stats.get("guidance")
        diagnostics.add_row(arm, f"{stats['mean_length']:.0f}", f"{stats['chunk_latency_ms']:.1f}",
                            f"{g['ratio_median']:.3g}" if g else "", f"{g['gate_mean']:.2f}" if g else "")
    tables.append(diagnostics)
    return tables


def markdown_table(block: dict) -> str:
    clustered = _is_clustered(block)
    header = _header(clustered)
    lines = ["| arm | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for arm, stats in block.items():
        lines.append(f"| {arm} | " + " | ".join(_row(stats, clustered)) + " |")
    return "\n".join(lines)


def plot_eval(out: Path, metrics: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    arms, tasks = metrics["arms"], list(metrics["per_task"])
    groups = tasks + ["pooled"]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups) * max(1, len(arms)) / 3), 3.8))
    width = 0.8 / len(arms)
    for i, arm in enumerate(arms):
        rates, lo, hi = [], [], []
        for g in groups:
            s = metrics["pooled"][arm] if g == "pooled" else metrics["per_task"][g][arm]
            rates.append(s["rate"])
            lo.append(s["rate"] - s["ci95"][0])
            hi.append(s["ci95"][1] - s["rate"])
        x = np.arange(len(groups)) + (i - (len(arms) - 1) / 2) * width
        ax.bar(x, rates, width, yerr=[lo, hi], capsize=2, label=arm)
    ax.set_xticks(np.arange(len(groups)), groups, rotation=20)
    ax.set(ylabel="success rate (95% Wilson CI)", ylim=(0, 1), title="paired evaluation: same episodes per arm")
    ax.legend(fontsize=7, ncol=min(len(arms), 4))
    fig.tight_layout()
    fig.savefig(out / "success_by_task.png", dpi=110)
    plt.close(fig)
    files.append("success_by_task.png")

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    lat = [metrics["pooled"][a]["chunk_latency_ms"] for a in arms]
    axes[0].bar(arms, lat)
    axes[0].set(ylabel="ms per chunk", title="sampling latency per arm")
    axes[0].tick_params(axis="x", rotation=20)
    for a in arms:
        g = metrics["pooled"][a].get("guidance")
        if g and g.get("ratio_by_step"):
            axes[1].plot(g["ratio_by_step"], marker="o", label=f"{a} ‖Δv‖/‖v‖")
            axes[1].plot(g["gate_by_step"], ls="--", label=f"{a} gate")
    axes[1].set(xlabel="flow step (0 = noise)", title="guidance over flow steps", yscale="symlog")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "latency_and_diagnostics.png", dpi=110)
    plt.close(fig)
    files.append("latency_and_diagnostics.png")
    return files


def plot_sweep(out: Path, rows: list[dict], strength_key: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    xs = [r["strength"] for r in rows]
    rates = [r["rate"] for r in rows]
    err = [[r["rate"] - r["ci95"][0] for r in rows], [r["ci95"][1] - r["rate"] for r in rows]]
    ax.errorbar(xs, rates, yerr=err, marker="o", capsize=3, label="guided")
    ax.axhline(rows[0]["baseline_rate"], color="k", ls=":", label="unguided")
    ax.set(xlabel=strength_key, ylabel="validation success (95% CI)", title="success vs strength (validation)")
    if min(xs) > 0:
        ax.set_xscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "sweep_success_vs_strength.png", dpi=110)
    plt.close(fig)
    return "sweep_success_vs_strength.png"


def test_read_lines(header: dict | None) -> list[str]:
    """What a report says about the test ledger: which read of these test episodes this is, and earlier results."""
    if not header:
        return []
    k = header["read_index"]
    if k == 1:
        return [f"Test episodes: **read 1** — no earlier run read them (test ledger `{header['ledger']}`, "
                f"read `{header['read_id']}`).", ""]
    lines = [f"**Test episodes: read {k} of these test episodes** (forced re-read; an earlier run read them, so "
             "this is not a clean test result). Earlier reads:", ""]
    for e in header["earlier"]:
        shared = "; ".join(f"{t} {s}" for t, s in (e.get("shared") or {}).items())
        lines.append(f"- {str(e['started_at'])[:19]} `{e['command']}` → `{e['run']}`: {shared}; results "
                     f"{e.get('results') or 'unfinished'}")
    return lines + [""]


def write_eval_report(out: Path, metrics: dict, meta: dict) -> Path:
    """metrics.json, report.md and plots in ``out``; returns the report path."""
    plots = plot_eval(out, metrics)
    if "reads" not in meta:
        meta = {**meta, "reads": describe_reads(meta["policy"], meta.get("critic"))}
    atomic_write_json(out / "metrics.json", {**meta, **metrics})
    lines = [f"# gaflow evaluation — split `{meta['split']}`", "",
             f"Every number below comes from the **{meta['split']}** seed split ({meta['n_seeds']} seeds per task: "
             f"{meta['seed_range']}), {len(metrics['per_task'])} task(s); each arm ran the same episodes "
             "(identical initial states, identical initial flow noise for single-candidate arms).", "",
             reads_line(meta["reads"]), ""]
    if meta.get("locked"):
        lk = meta["locked"]
        lines += [f"Guided config hash `{lk['hash']}`, locked at {lk['locked_at']} by `{lk['rule']}` on split "
                  f"`{lk['split']}` (lock digest `{str(lk.get('digest', ''))[:16]}`).", ""]
    elif meta.get("guided_unlocked"):
        lines += ["**The guided config was not locked by a validation sweep.**", ""]
    lines += test_read_lines(meta.get("test_read"))
    if metrics["unpaired_episodes"]:
        lines += [f"**Warning: {len(metrics['unpaired_episodes'])} episodes started from different states across "
                  "arms.**", ""]
    if _is_clustered(metrics["pooled"]):
        base = next(iter(metrics["pooled"].values()))
        lines += [f"**Episodes repeat initial states ({base['clustered']['clusters']} distinct for {base['n']} "
                  f"episodes): the clustered columns lead** ({base['clustered']['method']}).", ""]
    lines += ["## Pooled", "", markdown_table(metrics["pooled"]), ""]
    for t, block in metrics["per_task"].items():
        lines += [f"## {t}", "", markdown_table(block), ""]
    lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    lines += [legend(metrics) + ".", ""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def print_eval(metrics: dict, title: str, console: Console | None = None) -> None:
    """Print ``metrics`` once, readable at 80 columns: :func:`rich_tables` and a legend of what they show."""
    console = console or Console()
    for t in rich_tables(metrics, title):
        console.print(t)
        console.print()
    blocks = [metrics["pooled"], *metrics["per_task"].values()]
    note = "; " + TERMINAL_CLUSTERED_NOTE if any(_is_clustered(b) for b in blocks) else ""
    console.print(f"[dim]{LEGEND}{note}[/dim]")
