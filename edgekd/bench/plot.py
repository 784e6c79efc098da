"""Bar charts of latency documents (PNG, written atomically)."""

from __future__ import annotations

from pathlib import Path

from edgekd.plotting import pyplot, save_png


def plot_set(doc: dict, path: str | Path) -> None:
    """One panel per batch size: p50 of every model, whiskers from p50 to p90 (edgekd.bench-set)."""
    plt = pyplot()
    entries = doc["entries"]
    batches = [r["batch_size"] for r in entries[0]["document"]["results"]]
    fig, axes = plt.subplots(1, len(batches), figsize=(max(4.0, 1.0 + 0.9 * len(entries)) * len(batches), 3.8),
                             squeeze=False)
    for ax, b in zip(axes[0], batches, strict=True):
        p50, p90 = [], []
        for e in entries:
            r = next(r for r in e["document"]["results"] if r["batch_size"] == b)
            p50.append(r["latency_ms"]["p50"])
            p90.append(r["latency_ms"]["p90"])
        ax.bar(range(len(entries)), p50, yerr=[[0] * len(p50), [h - m for m, h in zip(p50, p90, strict=True)]],
               capsize=4, color="#4878a8")
        ax.set_xticks(range(len(entries)), [e["label"] for e in entries], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("latency p50 (ms), whisker p90")
        ax.set_title(f"batch {b}")
    fig.suptitle(f"{doc['environment']['cpu']['model'] if doc['environment'].get('cpu') else ''}, "
                 f"{doc['threads']} threads", fontsize=9)
    save_png(fig, plt, path)


def plot_compare(doc: dict, path: str | Path) -> None:
    """Teacher vs student p50 per backend, one panel per batch size, with the measured speed-up
    over each pair and the claimed one in the title (edgekd.latency-compare)."""
    plt = pyplot()
    batches = sorted({r["batch"] for r in doc["rows"]}, reverse=True)
    fig, axes = plt.subplots(1, len(batches), figsize=(5.0 * len(batches), 4.0), squeeze=False)
    for ax, b in zip(axes[0], batches, strict=True):
        rows = [r for r in doc["rows"] if r["batch"] == b]
        xs = range(len(rows))
        ax.bar([x - 0.2 for x in xs], [r["teacher_p50_ms"] for r in rows], 0.4, label="teacher", color="#a85848")
        ax.bar([x + 0.2 for x in xs], [r["student_p50_ms"] for r in rows], 0.4, label="student", color="#4878a8")
        for x, r in zip(xs, rows, strict=True):
            ax.annotate(f"{r['speedup']:.2f}x", (x, max(r["teacher_p50_ms"], r["student_p50_ms"])),
                        ha="center", va="bottom", fontsize=9)
        ax.set_xticks(list(xs), [_pair_label(r) for r in rows], fontsize=8)
        ax.set_ylabel(f"latency p50 per batch of {b} (ms)")
        ax.set_title(f"batch {b}")
        ax.legend(fontsize=8)
    claim = doc["claim"]
    fig.suptitle(f"measured teacher/student speed-up vs the claimed {claim['speedup']:.1f}x "
                 f"({claim['teacher_ms']:.0f} -> {claim['student_ms']:.0f} ms, batch {claim['batch']}); "
                 f"MAC ratio {doc['mac_ratio']:.2f}x", fontsize=9)
    save_png(fig, plt, path)


def _pair_label(r: dict) -> str:
    name = "torch eager" if r["backend"] == "torch" else "ONNX Runtime"
    prec = r["teacher_precision"] if r["teacher_precision"] == r["student_precision"] else \
        f"{r['teacher_precision']}/{r['student_precision']}"
    return f"{name}\n{prec}"
