"""The INT8 diagnosis chart: the worst tensors by SQNR (PNG, written atomically)."""

from __future__ import annotations

from pathlib import Path

from edgekd.plotting import pyplot, save_png


def diagnosis_png(doc: dict, path: str | Path, top: int = 20) -> None:
    """The INT8 diagnosis' worst tensors: a horizontal bar of each one's SQNR (dB), its own
    quantization and against FP32, labelled with its module."""
    plt = pyplot()
    rows = [r for r in doc["rows"] if r["sqnr_db"] is not None][:top]
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * max(len(rows), 3) + 1.2))
    y = list(range(len(rows)))[::-1]
    ax.barh([v + 0.2 for v in y], [r["sqnr_db"] for r in rows], height=0.4, color="#c62828",
            label="this tensor's quantization")
    ax.barh([v - 0.2 for v in y], [r["sqnr_vs_fp32_db"] or 0 for r in rows], height=0.4,
            color="#9e9e9e", label="INT8 model vs FP32 so far")
    ax.set_yticks(y, [f"{r['module'] or r['tensor']} ({r['producer_op']})" for r in rows], fontsize=6)
    ax.set_xlabel("SQNR (dB), higher is better")
    ax.set_title(f"INT8 per-layer diagnosis, worst first ({doc['images']} images)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(True, axis="x", linewidth=0.3)
    save_png(fig, plt, path)

