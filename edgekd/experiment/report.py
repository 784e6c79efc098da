"""Tables (markdown + JSON) and plots of an experiment's runs."""

from __future__ import annotations

import math
import textwrap
from collections import defaultdict
from pathlib import Path

from edgekd.experiment.stats import summarize, welch_p
from edgekd.io import write_json, write_text


def _fmt(x: float | None, nd: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def _fmt_p(p: float | None) -> str:
    return "n/a" if p is None else ("<0.001" if p < 1e-3 else f"{p:.3f}")


def ablation_table(records: list[dict], baselines: tuple[str, ...] = ("student", "kd")) -> dict:
    """Per label: last-epoch and best-epoch accuracy over seeds, Welch p vs the baselines."""
    last, best = defaultdict(list), defaultdict(list)
    seeds, epochs = defaultdict(list), {}
    for r in records:
        s = r["report"]["student"]
        last[r["label"]].append(s["accuracy"])
        if s.get("accuracy_best_epoch") is not None:  # None: no validation split to select on
            best[r["label"]].append(s["accuracy_best_epoch"])
        seeds[r["label"]].append(r["seed"])
        plan = s.get("epochs") or {}
        epochs.setdefault(r["label"], (plan.get("total"), plan.get("warmup", 0)))
    rows = []
    for label in dict.fromkeys(r["label"] for r in records):
        total, warm = epochs[label]  # the same for every seed of a method
        row = {"label": label, "seeds": seeds[label], "last_epoch": summarize(last[label]),
               "best_epoch": summarize(best[label]), "values": last[label],
               "epochs": total, "warmup_epochs": warm}
        for b in baselines:
            if b in last and b != label:
                row[f"p_vs_{b}"] = welch_p(last[label], last[b])
        rows.append(row)
    return {"metric": "student test top-1 (%)", "baselines": list(baselines), "rows": rows}


def _epochs_cell(row: dict) -> str:
    total, warm = row.get("epochs"), row.get("warmup_epochs") or 0
    if total is None:
        return "n/a"
    return f"{total} ({warm} warm-up)" if warm else str(total)


def ablation_markdown(table: dict, title: str, command: str, machine: str,
                      recipe: str = "") -> str:
    bl = table["baselines"]
    head = ["method", "n", "epochs", "last epoch mean ± sd", "best run",
            "best-val epoch mean ± sd"] + [f"p vs {b}" for b in bl]
    lines = [f"# {title}", "", f"Command: `{command}`", "", f"Machine: {machine}", "",
             *([f"Recipe: {recipe}", ""] if recipe else []),
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table["rows"]:
        le, be = r["last_epoch"], r["best_epoch"]
        cells = [r["label"], str(le["n"]), _epochs_cell(r), f"{_fmt(le['mean'])} ± {_fmt(le['sd'])}",
                 _fmt(le["best"]), f"{_fmt(be['mean'])} ± {_fmt(be['sd'])}"]
        cells += [_fmt_p(r.get(f"p_vs_{b}")) if b != r["label"] else "—" for b in bl]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Epochs: every epoch the student trained, the InDistill warm-up's included. "
              "Accuracy: test top-1 of the student in %, last epoch (the papers' protocol); "
              "best-val epoch = the epoch with the best validation accuracy. p: two-sided Welch "
              "t-test on last-epoch accuracies. Seeds per method: "
              + (", ".join(map(str, table["rows"][0]["seeds"])) if table["rows"] else "none") + "."]
    return "\n".join(lines) + "\n"


def bar_plot(table: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table["rows"]
    labels = [r["label"] for r in rows]
    means = [r["last_epoch"]["mean"] for r in rows]
    sds = [0.0 if math.isnan(r["last_epoch"]["sd"]) else r["last_epoch"]["sd"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(rows) + 2), 3.5))
    ax.bar(range(len(rows)), means, yerr=sds, capsize=4, color="#4878a8")
    for i, r in enumerate(rows):
        ax.scatter([i] * len(r["values"]), r["values"], color="k", s=8, zorder=3)
    ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right")
    lo = min(min(r["values"]) for r in rows)
    ax.set_ylim(max(0, lo - 5), min(100, max(means) + max(sds) + 2))
    ax.set_ylabel("test top-1 (%), last epoch")
    ax.set_title("\n".join(textwrap.wrap(title, 50)), fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sweep_rows(records: list[dict]) -> list[dict]:
    rows = []
    for r in records:
        rep = r["report"]
        lat = rep.get("latency", {}).get("student", {}).get("batch_1", {})
        rows.append({"student": rep["student"]["arch"], "seed": r["seed"],
                     "compression_factor": rep["compression_factor"], "macs": rep["student"]["macs"],
                     "params": rep["student"]["params"], "accuracy": rep["student"]["accuracy"],
                     "latency_p50_ms_b1": lat.get("p50_ms")})
    return rows


def sweep_plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for family, marker in (("trunc", "o"), ("_w", "s")):
        pts = [r for r in rows if family in r["student"]]
        if not pts:
            continue
        axes[0].scatter([r["compression_factor"] for r in pts], [r["accuracy"] for r in pts],
                        marker=marker, label="truncated" if family == "trunc" else "width")
        lat = [r for r in pts if r["latency_p50_ms_b1"] is not None]
        axes[1].scatter([r["latency_p50_ms_b1"] for r in lat], [r["accuracy"] for r in lat],
                        marker=marker, label="truncated" if family == "trunc" else "width")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("compression factor (params)")
    axes[1].set_xlabel("latency p50, batch 1 (ms, ONNX Runtime CPU)")
    for ax in axes:
        ax.set_ylabel("test top-1 (%)")
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(out: Path, name: str, doc: dict, markdown: str) -> None:
    write_json(out / f"{name}.json", doc)
    write_text(out / f"{name}.md", markdown)
