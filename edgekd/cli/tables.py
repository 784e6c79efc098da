"""The rich tables the verbs print: one function per document kind, values in, Table out."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table


def summary_table(report: dict) -> Table:
    from rich import box

    t, s = report["teacher"], report["student"]
    lat = report.get("latency", {})
    table = Table(title=f"edgekd compress: {report['dataset']['name']}, {report['method']}",
                  box=box.SIMPLE_HEAD, padding=(0, 1))
    table.add_column("", no_wrap=True)
    table.add_column(f"teacher\n{t['arch']}", justify="right", min_width=len(t["arch"]))
    table.add_column(f"student\n{s['arch']}", justify="right", min_width=len(s["arch"]))
    table.add_column("ratio", justify="right", no_wrap=True)
    table.add_row("test top-1, last epoch", f"{t['accuracy']:.2f} %", f"{s['accuracy']:.2f} %",
                  f"{s['accuracy'] - t['accuracy']:+.2f} pp")

    def best(entry):
        value = entry.get("accuracy_best_epoch")
        return "n/a (no val)" if value is None else f"{value:.2f} %"

    table.add_row("test top-1, best-val ep.", best(t), best(s), "")

    def epochs(entry):
        plan = entry.get("epochs") or {}
        if plan.get("total") is None:
            return "given"  # a checkpoint trained elsewhere
        warm = plan.get("warmup")
        return f"{plan['total']}" + (f" ({warm} warm-up)" if warm else "")

    table.add_row("epochs", epochs(t), epochs(s), "")
    table.add_row("params", f"{t['params']:,}", f"{s['params']:,}",
                  f"{report['compression_factor']:.2f}x (CF)")
    table.add_row("MACs / image", f"{t['macs'] / 1e6:.1f} M", f"{s['macs'] / 1e6:.1f} M",
                  f"{report['mac_reduction']:.2f}x")
    for key in sorted({k for role in ("teacher", "student") for k in lat.get(role, {})},
                      key=lambda k: int(k.split("_")[1])):
        tl, sl = lat["teacher"].get(key), lat["student"].get(key)
        if tl and sl:
            table.add_row(f"latency p50, {key.replace('_', ' ')}", f"{tl['p50_ms']:.2f} ms",
                          f"{sl['p50_ms']:.2f} ms", f"{tl['p50_ms'] / sl['p50_ms']:.2f}x faster")
    budget = report.get("budget")
    final = (budget or {}).get("final")
    if final:
        asked = (f"teacher/{budget['speedup']:g}" if budget.get("speedup") is not None
                 else f"{budget['latency_ms']:g} ms")
        verdict = "holds" if final["holds"] else "OVER"
        table.add_row(f"budget {asked}, batch {final['batch']}", f"{final['teacher_ms']:.2f} ms",
                      f"{final['student_ms']:.2f} ms", f"{final['speedup']:.1f}x faster")
        table.add_row(f"  limit ({final['percentile']}, {final['precision']})", "",
                      f"{final['limit_ms']:.2f} ms", f"{verdict} {final['margin_pct']:+.1f} %")
    if lat:
        table.caption = f"latency: {lat.get('backend')} on {lat.get('cpu')}"
        if final:
            table.caption += (f"\nbudget on {final['target']}, student chosen from "
                              f"{budget['selection']['candidates']} candidates (select/pareto.png)")
    return table



def select_table(doc: dict) -> Table:
    from rich import box

    b = doc["budget"]
    limit = b.get("limit_ms")
    title = (f"combinations on {doc['target']['spec']}, batch {b['batch']}"
             + (f": limit {limit:.3g} ms" if limit else ""))
    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1))
    scores = (doc.get("proxy") or {}).get("scores") or {}
    cols = ["model", "px", "prec", "MACs", "p50 ms", "CI hi", *(["proxy %"] if scores else []), "fits"]
    for col in cols:
        table.add_column(col, justify="left" if col in ("model", "prec") else "right", no_wrap=col != "model")
    rows = list(doc["candidates"])
    if doc.get("teacher"):
        rows.append({**doc["teacher"], "teacher": True})
    chosen = (doc.get("choice") or {}).get("key")
    for r in rows:
        lat = r["latency_ms"]
        key = r.get("key", r["arch"])
        mark = "teacher" if r.get("teacher") else (
            "chosen" if key == chosen else "slower" if r.get("excluded") else
            ("yes" if r.get("fits") else ("no" if limit else "")))
        score = scores.get(key)
        table.add_row(r["arch"] + (" *" if r.get("cached") else ""),
                      str(r.get("input_size") or doc["input_size"]), r.get("precision", "fp32"),
                      f"{r['macs'] / 1e6:.1f}M", f"{lat['p50']:.2f}", f"{lat['median_ci95'][1]:.2f}",
                      *([f"{score:.1f}" if score is not None else ""] if scores else []), mark)
    table.caption = (f"{doc['target'].get('cpu') or ''} {doc['target']['backend']}; CI hi: upper end "
                     f"of the median's 95 % CI; slower: never chosen, slower than fp32 there; "
                     f"* = cached ({doc['cached']} cached, {doc['measured']} measured); "
                     f"chosen by: {doc.get('chosen_by') or 'nothing fits'}")
    return table



def diagnosis_table(diag: dict) -> Table:
    from rich import box

    table = Table(title="INT8 per-layer diagnosis, worst first", box=box.SIMPLE_HEAD, padding=(0, 1))
    for col in ("module", "op", "SQNR dB", "vs FP32 dB"):
        table.add_column(col, justify="left" if col in ("module", "op") else "right")
    for r in diag["worst"]:
        table.add_row(r["module"] or r["tensor"], r["producer_op"],
                      "-" if r["sqnr_db"] is None else f"{r['sqnr_db']:.1f}",
                      "-" if r["sqnr_vs_fp32_db"] is None else f"{r['sqnr_vs_fp32_db']:.1f}")
    table.caption = f"{diag['json']} / {diag['png']}"
    return table



def compare_table(doc: dict) -> Table:
    t, s = doc["teacher"], doc["student"]
    table = Table(title=f"teacher {t['arch']} ({t['macs'] / 1e6:.1f} M MACs/image) vs student "
                        f"{s['arch']} ({s['macs'] / 1e6:.1f} M)")
    for col in ("backend", "precision", "batch", "teacher p50", "student p50", "speed-up", "95 % CI"):
        table.add_column(col, justify="left" if col in ("backend", "precision") else "right")
    for r in doc["rows"]:
        prec = (r["teacher_precision"] if r["teacher_precision"] == r["student_precision"]
                else f"T {r['teacher_precision']}, S {r['student_precision']}")
        table.add_row("torch eager" if r["backend"] == "torch" else "ONNX Runtime", prec, str(r["batch"]),
                      f"{r['teacher_p50_ms']:.2f} ms", f"{r['student_p50_ms']:.2f} ms",
                      f"{r['speedup']:.2f}x", f"{r['speedup_ci95'][0]:.2f}-{r['speedup_ci95'][1]:.2f}")
    table.caption = (f"{(doc['environment'].get('cpu') or {}).get('model')}, {doc['threads']} threads; "
                     "p50 per batch; CI from the medians' bootstrap intervals")
    return table


def compare_lines(doc: dict) -> list[str]:
    """The measured speed-ups next to the claimed one, one line per batch size."""
    claim = doc["claim"]
    lines = [f"claimed: {claim['teacher_ms']:.0f} ms -> {claim['student_ms']:.0f} ms per batch of "
             f"{claim['batch']} = {claim['speedup']:.1f}x;  MAC ratio teacher/student = "
             f"{doc['mac_ratio']:.2f}x;  params {doc['param_ratio']:.2f}x"]
    for b in sorted({r["batch"] for r in doc["rows"]}, reverse=True):
        parts = [f"{'torch eager' if r['backend'] == 'torch' else 'ONNX Runtime'}"
                 f"{'' if r['teacher_precision'] == r['student_precision'] == 'fp32' else ' ' + r['student_precision']}"
                 f" {r['speedup']:.2f}x" for r in doc["rows"] if r["batch"] == b]
        lines.append(f"measured at batch {b}: " + ", ".join(parts))
    return lines


def set_table(doc: dict) -> Table:
    table = Table(title=f"edgekd bench ({doc['threads']} threads)")
    for col in ("model", "backend", "batch", "p50 ms", "p90 ms", "p99 ms", "img/s"):
        table.add_column(col, justify="left" if col in ("model", "backend") else "right")
    for e in doc["entries"]:
        for i, r in enumerate(e["document"]["results"]):
            lat = r["latency_ms"]
            head = [Path(e["path"]).name, f"{e['backend']} {e['precision']}"] if i == 0 else ["", ""]
            table.add_row(*head, str(r["batch_size"]), f"{lat['p50']:.3f}", f"{lat['p90']:.3f}",
                          f"{lat['p99']:.3f}", f"{r['throughput_ips']:.1f}")
    return table



def deploy_table(doc: dict) -> Table:
    table = Table(title=f"{doc['where']}: {doc['backend']}, bundle {doc['bundle']['id'][:12]}")
    for col in ("model", "top-1 %", "agree %", "batch", "p50 ms", "p90 ms", "p99 ms", "img/s"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for key, m in sorted(doc["models"].items()):
        acc = m["accuracy"]
        agree = f"{acc['agreement']:.1f}" if acc.get("agreement") is not None else "-"
        for i, r in enumerate(m["results"]):
            lat = r["latency_ms"]
            head = [f"{key} ({m.get('precision', '?')})", f"{acc['top1']:.2f}", agree] if i == 0 else ["", "", ""]
            table.add_row(*head, str(r["batch_size"]), f"{lat['p50']:.3f}", f"{lat['p90']:.3f}",
                          f"{lat['p99']:.3f}", f"{r['throughput_ips']:.1f}")
    first = next(iter(doc["models"].values()))
    table.caption = (f"{first['environment'].get('hostname')}, {(first['environment'].get('cpu') or {}).get('model')}; "
                     f"top-1 on {first['accuracy']['samples']} labelled test images; agree = same top-1 "
                     "as ONNX Runtime on the workstation")
    return table
