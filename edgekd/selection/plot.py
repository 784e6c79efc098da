"""The selection's Pareto plot: latency against MACs for every candidate, the budget line, the
chosen student and the teacher marked (PNG, written atomically)."""

from __future__ import annotations

from pathlib import Path

from edgekd.plotting import pyplot, save_png


def pareto_png(doc: dict, path: str | Path) -> None:
    plt = pyplot()
    rows = doc["candidates"]
    budget = doc["budget"]
    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    fits = [r for r in rows if r.get("fits")]
    over = [r for r in rows if not r.get("fits")]
    for group, colour, name in ((fits, "#2e7d32", "fits"), (over, "#9e9e9e", "over budget")):
        if group:
            ax.scatter([r["macs"] / 1e6 for r in group], [r["value_ms"] for r in group],
                       s=22, color=colour, label=name, zorder=3)
    for r in rows:
        ax.annotate(r["arch"], (r["macs"] / 1e6, r["value_ms"]), fontsize=5.5,
                    xytext=(3, 2), textcoords="offset points", color="#424242")
    teacher = doc.get("teacher")
    if teacher:
        ax.scatter([teacher["macs"] / 1e6], [teacher["value_ms"]], marker="s", s=40,
                   color="#1565c0", label=f"teacher {teacher['arch']} (fp32)", zorder=4)
    chosen = next((r for r in rows if r["arch"] == doc.get("chosen")), None)
    if chosen:
        ax.scatter([chosen["macs"] / 1e6], [chosen["value_ms"]], marker="*", s=180,
                   color="#c62828", label=f"chosen {chosen['arch']}", zorder=5)
    if budget.get("limit_ms"):
        ax.axhline(budget["limit_ms"], color="#c62828", linestyle="--", linewidth=1,
                   label=f"budget {budget['limit_ms']:.3g} ms")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"MACs per image (millions) at {doc['input_size']}x{doc['input_size']}")
    ax.set_ylabel(f"latency {budget['percentile']} (ms) at batch {budget['batch']}, {budget['precision']}")
    target = doc["target"]
    ax.set_title(f"{target['spec']} ({target.get('cpu') or target['backend']}), {target['backend']}",
                 fontsize=9)
    ax.grid(True, which="both", linewidth=0.3)
    ax.legend(fontsize=7, loc="upper left")
    save_png(fig, plt, path)
