"""The selection's Pareto plot (PNG, written atomically). Left: latency against MACs for every
combination measured (marker: precision; colour: fits, over budget, or never chosen because
it is slower than FP32), the budget line, the teacher and the choice. Right, when the accuracy
proxy ran: its validation accuracy against latency for the options it scored, the budget and
the choice."""

from __future__ import annotations

from pathlib import Path

from edgekd.plotting import pyplot, save_png

MARKERS = {"fp32": "o", "fp16": "D", "int8": "^"}


def _name(r: dict) -> str:
    return r.get("key") or r["arch"]


def pareto_png(doc: dict, path: str | Path) -> None:
    plt = pyplot()
    rows = doc["candidates"]
    budget = doc["budget"]
    proxy = (doc.get("proxy") or {}).get("scores") or {}
    fig, axes = plt.subplots(1, 2 if proxy else 1, figsize=(12.5 if proxy else 7.5, 5.0), squeeze=False)
    ax = axes[0][0]
    chosen_key = (doc.get("choice") or {}).get("key") or doc.get("chosen")
    for precision, marker in MARKERS.items():
        for group, colour, what in (
            ([r for r in rows if r.get("fits") and not r.get("excluded")], "#2e7d32", "fits"),
            ([r for r in rows if not r.get("fits") and not r.get("excluded")], "#9e9e9e", "over budget"),
            ([r for r in rows if r.get("excluded")], "#ef6c00", "slower than fp32"),
        ):
            group = [r for r in group if r.get("precision", "fp32") == precision]
            if group:
                ax.scatter([r["macs"] / 1e6 for r in group], [r["value_ms"] for r in group], s=22,
                           color=colour, marker=marker, label=f"{precision}, {what}", zorder=3)
    for r in rows:
        ax.annotate(_name(r), (r["macs"] / 1e6, r["value_ms"]), fontsize=5,
                    xytext=(3, 2), textcoords="offset points", color="#424242")
    teacher = doc.get("teacher")
    if teacher:
        ax.scatter([teacher["macs"] / 1e6], [teacher["value_ms"]], marker="s", s=40,
                   color="#1565c0", label=f"teacher {teacher['arch']} (fp32)", zorder=4)
    chosen = next((r for r in rows if _name(r) == chosen_key), None)
    if chosen:
        ax.scatter([chosen["macs"] / 1e6], [chosen["value_ms"]], marker="*", s=180,
                   color="#c62828", label=f"chosen {_name(chosen)}", zorder=5)
    if budget.get("limit_ms"):
        ax.axhline(budget["limit_ms"], color="#c62828", linestyle="--", linewidth=1,
                   label=f"budget {budget['limit_ms']:.3g} ms")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("MACs per image (millions), at the size each computes at")
    ax.set_ylabel(f"latency {budget['percentile']} (ms, CI upper end) at batch {budget['batch']}")
    target = doc["target"]
    ax.set_title(f"{target['spec']} ({target.get('cpu') or target['backend']}), {target['backend']}, "
                 f"input {doc['input_size']} px", fontsize=9)
    ax.grid(True, which="both", linewidth=0.3)
    ax.legend(fontsize=6, loc="upper left")
    if proxy:
        _accuracy_panel(axes[0][1], doc, proxy, chosen_key)
    save_png(fig, plt, path)


def _accuracy_panel(ax, doc: dict, scores: dict, chosen_key) -> None:
    rows = {_name(r): r for r in doc["candidates"]}
    scored = [(rows[k], acc) for k, acc in scores.items() if k in rows]
    for r, acc in scored:
        mine = _name(r) == chosen_key
        ax.scatter([r["value_ms"]], [acc], marker="*" if mine else MARKERS.get(r["precision"], "o"),
                   s=180 if mine else 30, color="#c62828" if mine else "#2e7d32", zorder=4)
        ax.annotate(_name(r), (r["value_ms"], acc), fontsize=6, xytext=(4, 2), textcoords="offset points")
    limit = doc["budget"].get("limit_ms")
    if limit:
        ax.axvline(limit, color="#c62828", linestyle="--", linewidth=1, label=f"budget {limit:.3g} ms")
        ax.legend(fontsize=7, loc="lower right")
    p = doc["proxy"]
    ax.set_xlabel(f"latency {doc['budget']['percentile']} (ms, CI upper end)")
    ax.set_ylabel(f"proxy: {p['metric']} after {p['epochs']} epochs")
    ax.set_title(f"accuracy proxy on {p['images']} training images ({p['loss']})", fontsize=9)
    ax.grid(True, linewidth=0.3)
