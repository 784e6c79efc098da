"""Choosing a student by latency on the target (edgekd.selection, `edgekd select`, `compress
--latency-budget / --speedup`): real exports, real ONNX Runtime runs through deploy's bundle
path, on `local` and on a real OpenSSH server on 127.0.0.1."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from deploy.harness import MeasureSettings
from edgekd.cli import cli
from edgekd.config import build_config
from edgekd.config.budget import Budget
from edgekd.selection.cache import LatencyCache, environment_fingerprint
from edgekd.selection.select import rank
from tests import sshd

# Three small candidates of three families, and a small teacher, at 16x16.
CANDIDATES = "resnet8_cifar_w0.5,mbv2_cifar_d0.25_w0.35,mbv2_cifar_trunc13"
TEACHER = "mbv2_cifar_w0.25"
SELECT = ["select", "--input-size", "16", "--candidates", CANDIDATES, "--teacher-arch", TEACHER]
# One precision and one size: the tests of plumbing, cache and final check measure 4 models,
# not the 12 of the whole search (tested on its own below).
ONE_AXIS = ["--budget-precision", "fp32", "--budget-input-sizes", "16"]


def _one_line_error(r, *needles):
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and sum(x.startswith("error:") for x in lines) == 1, r.stderr
    for n in needles:
        assert n in lines[-1], lines[-1]
    return lines[-1]


def _results(device: Path) -> list[Path]:
    return sorted((device / "results").glob("*.json")) if (device / "results").is_dir() else []


# Selection measures each model with edgekd.selection.measure.SELECT_SETTINGS: at least 0.2 s
# of warm-up and 0.5 s of timed runs, however fast the model. These tests check the plumbing,
# the ranking, the cache and the final check, not the figures: 2 warm-up runs and 5 timed ones
# end each measurement (the time cap is far out of reach, so a loaded machine still measures
# the 5 runs), as the bench and deploy tests pass with --min-iters.
FAST_SELECT = MeasureSettings(warmup_s=0, warmup_iters=2, min_s=0, min_iters=5, max_s=600)


@pytest.fixture(autouse=True)
def _iteration_bounded_measurements(monkeypatch):
    """Both names the selection and the compress budget stage read the settings through (no
    `select` or `compress` option sets them)."""
    import edgekd.selection.measure as measure
    import edgekd.selection.select as select

    monkeypatch.setattr(measure, "SELECT_SETTINGS", FAST_SELECT)
    monkeypatch.setattr(select, "SELECT_SETTINGS", FAST_SELECT)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if sshd.missing() is not None:
        pytest.skip(str(sshd.missing()))
    s = sshd.LoopbackSshd(tmp_path_factory.mktemp("sshd"))
    s.start()
    yield s
    s.stop()


def test_select_over_an_ssh_alias_writes_table_json_and_plot_then_measures_nothing_again(server, tmp_path):
    device, cache, out = tmp_path / "device", tmp_path / "cache", tmp_path / "select"
    argv = [*SELECT, "--target", sshd.ALIAS, "--ssh-config", str(server.config), "--remote-dir",
            str(device), "--remote-python", sys.executable, "--cache-dir", str(cache), "--out", str(out),
            "--latency-budget", "1000", *ONE_AXIS]
    first = CliRunner().invoke(cli, argv)
    assert first.exit_code == 0, first.output
    doc = json.loads((out / "select.json").read_text())
    names = CANDIDATES.split(",")
    assert {r["arch"] for r in doc["candidates"]} == set(names) and doc["teacher"]["arch"] == TEACHER
    assert doc["measured"] == 4 and doc["cached"] == 0 and len(_results(device)) == 1
    # Everything fits 1 s: the most MACs wins.
    assert doc["chosen"] == max(doc["candidates"], key=lambda r: r["macs"])["arch"]
    assert all(r["fits"] and r["latency_ms"]["p50"] > 0 for r in doc["candidates"])
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in names:
        assert name in first.stdout
    assert "chosen" in first.stdout and "teacher" in first.stdout

    again = CliRunner().invoke(cli, argv)
    assert again.exit_code == 0, again.output
    redo = json.loads((out / "select.json").read_text())
    # Nothing ran on the device: no new results file, every figure from the cache.
    assert redo["measured"] == 0 and redo["cached"] == 4 and len(_results(device)) == 1
    assert all(r["cached"] for r in redo["candidates"]) and redo["teacher"]["cached"]
    assert [r["latency_ms"] for r in redo["candidates"]] == [r["latency_ms"] for r in doc["candidates"]]
    assert "4 cached, 0 measured" in " ".join(again.stdout.split())

    # Another batch size is another measurement.
    other = CliRunner().invoke(cli, [*argv, "--budget-batch", "8"])
    assert other.exit_code == 0, other.output
    assert json.loads((out / "select.json").read_text())["measured"] == 4 and len(_results(device)) == 2


def test_an_unreachable_target_is_the_one_line_error_of_deploy(server, tmp_path):
    url = f"ssh://{server.user}@127.0.0.1:{sshd.free_port()}"
    r = CliRunner().invoke(cli, [*SELECT, "--target", url, "--ssh-config", str(server.config),
                                 "--latency-budget", "5", "--out", str(tmp_path / "s")])
    _one_line_error(r, "cannot reach", "is the device on")
    assert "Traceback" not in r.output and not (tmp_path / "s" / "select.json").exists()


def test_a_budget_no_candidate_meets_names_the_fastest_and_what_would_help(tmp_path):
    r = CliRunner().invoke(cli, [*SELECT, "--latency-budget", "0.001", "--cache-dir", str(tmp_path / "c"),
                                 "--out", str(tmp_path / "s"), "--remote-dir", str(tmp_path / "d"), *ONE_AXIS])
    last = _one_line_error(r, "no candidate meets 0.001 ms", "the nearest", "--budget-precision auto",
                           "smaller --budget-batch", "a larger budget")
    doc = json.loads((tmp_path / "s" / "select.json").read_text())
    fastest = min(doc["candidates"], key=lambda row: row["value_ms"])
    assert fastest["key"] in last and doc["chosen"] is None
    assert not any(row["fits"] for row in doc["candidates"])


def test_int8_candidates_are_measured_and_cached_apart_from_fp32_ones(tmp_path):
    base = ["select", "--input-size", "16", "--candidates", "resnet8_cifar_w0.5", "--teacher-arch", TEACHER,
            "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "s"), "--remote-dir",
            str(tmp_path / "d"), "--latency-budget", "1000", "--budget-input-sizes", "16"]
    r = CliRunner().invoke(cli, [*base, "--budget-precision", "int8"])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "s" / "select.json").read_text())
    (row,) = doc["candidates"]
    assert row["precision"] == "int8" and doc["teacher"]["precision"] == "fp32"
    assert (tmp_path / "s" / "work" / "models" / "resnet8_cifar_w0.5.int8.onnx").is_file()
    assert doc["measured"] == 2
    # FP32 of the same candidate is another measurement; the FP32 teacher is the same one.
    r = CliRunner().invoke(cli, [*base, "--budget-precision", "fp32"])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "s" / "select.json").read_text())
    assert doc["candidates"][0]["precision"] == "fp32" and (doc["measured"], doc["cached"]) == (1, 1)
    assert doc["teacher"]["cached"] and not doc["candidates"][0]["cached"]


@pytest.mark.parametrize(("args", "needle"), [
    (["--latency-budget", "0"], "--latency-budget must be > 0"),
    (["--latency-budget", "-3"], "--latency-budget must be > 0"),
    (["--speedup", "0.5"], "--speedup must be >= 1"),
    (["--speedup", "2", "--latency-budget", "4"], "pass one of them"),
    (["--speedup", "2", "--budget-precision", "fp16"], "--budget-precision fp16: onnxruntime has no fp16"),
    (["--speedup", "2", "--budget-input-sizes", "40"], "--budget-input-sizes 40 is above the run's input size 16"),
])
def test_impossible_budgets_are_refused_before_anything_is_measured(tmp_path, args, needle):
    r = CliRunner().invoke(cli, [*SELECT, *args, "--out", str(tmp_path / "s")])
    _one_line_error(r, needle)
    assert not (tmp_path / "s").exists()


def _record(arch, macs, p50, hi, params=1000, precision="fp32", size=16):
    return {"arch": arch, "macs": macs, "params": params, "precision": precision, "input_size": size,
            "latency_ms": {"p50": p50, "p90": p50 * 1.1, "median_ci95": [p50 * 0.98, hi]}}


def test_rank_takes_the_most_macs_that_fits_with_the_ci_and_the_margin():
    records = {"big": _record("big", 9e6, 9.0, 9.2), "mid": _record("mid", 5e6, 4.6, 4.9),
               "edge": _record("edge", 6e6, 4.7, 5.1), "small": _record("small", 1e6, 1.0, 1.1)}
    rows = rank(records, Budget(latency_ms=5.2, margin=0.05), 5.2)
    # edge's median is under the limit less 5 %, the upper end of its CI is not: it does not fit.
    assert [r["arch"] for r in rows] == ["mid", "small", "edge", "big"]
    assert [r["fits"] for r in rows] == [True, True, False, False]
    assert rows[0]["margin_pct"] == pytest.approx(100 * (5.2 - 4.9) / 5.2, abs=0.01)
    # A p90 without its interval (measured before the harness kept one) is held as measured
    # (here 1.1 x p50), with no margin: edge (5.17 ms) fits now.
    p90 = rank(records, Budget(latency_ms=5.2, percentile="p90", margin=0), 5.2)
    assert [r["arch"] for r in p90 if r["fits"]] == ["edge", "mid", "small"]
    assert p90[0]["value_ms"] == pytest.approx(5.17)
    # With its interval, p99's upper end is held: edge's tail reaches 5.3 ms, over the limit.
    for r in records.values():
        p50 = r["latency_ms"]["p50"]
        r["latency_ms"].update(p99=p50 * 1.12, p99_ci95=[p50 * 1.05, p50 * 1.13])
    p99 = rank(records, Budget(latency_ms=5.2, percentile="p99", margin=0), 5.2)
    assert [r["arch"] for r in p99 if r["fits"]] == ["mid", "small"]
    assert p99[-2]["value_ms"] == pytest.approx(4.7 * 1.13)


def test_the_cache_key_holds_the_environment_and_a_damaged_entry_is_a_miss(tmp_path):
    probe = {"hostname": "jetson", "machine": "aarch64", "cpu": "ARMv8", "usable_cores": 6,
             "python": {"version": "3.10.12"}, "modules": {"onnxruntime": "1.18.0", "tensorrt": "10.3"},
             "l4t": "# R36 (release), REVISION: 4.0"}
    base = environment_fingerprint(probe, "onnxruntime")
    assert environment_fingerprint(probe, "tensorrt")["libraries"] == {"tensorrt": "10.3", "pycuda": None}
    cache = LatencyCache(tmp_path)
    key = LatencyCache.key({"environment": base, "arch": "resnet8_cifar", "batch": 64})
    cache.put(key, {"arch": "resnet8_cifar"}, _record("resnet8_cifar", 1, 2.0, 2.1))
    assert cache.get(key)["latency_ms"]["p50"] == 2.0
    fewer = environment_fingerprint({**probe, "usable_cores": 4}, "onnxruntime")
    assert LatencyCache.key({"environment": fewer, "arch": "resnet8_cifar", "batch": 64}) != key
    (tmp_path / "latency" / f"{key}.json").write_text("{not json")
    assert cache.get(key) is None


def test_digits_defaults_choose_by_budget_and_a_named_student_replaces_that_budget():
    cfg = build_config()
    assert cfg.student.arch is None and cfg.budget.speedup == 10 and cfg.budget.active
    named = build_config(overrides={"student.arch": "mbv2_cifar_trunc5"})
    assert named.student.arch == "mbv2_cifar_trunc5" and not named.budget.active
    r = CliRunner().invoke(cli, ["compress", "--student", "mbv2_cifar_trunc5", "--speedup", "10"])
    _one_line_error(r, "--student mbv2_cifar_trunc5", "--speedup 10", "drop one of them")
    r = CliRunner().invoke(cli, ["compress", "--dataset", "cifar10", "--set", "student.arch=resnet8_cifar",
                                 "--set", "budget.latency_ms=5"])
    _one_line_error(r, "--student resnet8_cifar", "--latency-budget 5")


# A small budget run: KD only, a small teacher, 16x16, two candidates.
BUDGET_RUN = [
    "compress", "--method", "kd", "--teacher-arch", TEACHER, "--input-size", "16",
    "--train-subset", "0.25", "--teacher-epochs", "1", "--epochs", "1",
    "--set", "budget.candidates=resnet8_cifar_w0.5,mbv2_cifar_trunc13",
    "--set", "bench.min_s=0", "--set", "bench.warmup_s=0", "--set", "bench.min_iters=3",
    "--set", "bench.batch_sizes=1,8", "--budget-batch", "8",
]
ONE_COMBINATION_EACH = [*ONE_AXIS, "--select-epochs", "0"]


def test_compress_with_a_latency_budget_chooses_checks_on_the_target_and_reports(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the local target's bundles folder
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, [*BUDGET_RUN, *ONE_COMBINATION_EACH, "--latency-budget", "1000", "--out", str(out)])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    b = report["budget"]
    # Both fit 1 s: the one with more MACs (mbv2_cifar_trunc13, 5.9 M against 0.8 M).
    sel = json.loads((out / "select" / "select.json").read_text())
    assert {r["arch"] for r in sel["candidates"]} == {"resnet8_cifar_w0.5", "mbv2_cifar_trunc13"}
    biggest = max(sel["candidates"], key=lambda r: r["macs"])["arch"]
    assert report["student"]["arch"] == b["selection"]["chosen"] == sel["chosen"] == biggest
    assert b["latency_ms"] == 1000 and b["batch"] == 8 and b["holds"] is True
    final = b["final"]
    assert final["student"] == biggest and 0 < final["student_ms"] <= final["limit_ms"] == 1000
    assert final["speedup"] == round(final["teacher_ms"] / final["student_ms"], 2)
    bench = json.loads((out / final["results"]).read_text())
    assert set(bench["models"]) == {"teacher", "student"}
    assert bench["models"]["student"]["results"][0]["batch_size"] == 8
    assert (out / "select" / "pareto.png").is_file() and b["selection"]["candidates"] == 2
    assert "holds" in r.stdout and "limit" in r.stdout

    # Resumed: the selection and the check are skipped, the run's own files reopen with the
    # chosen student (edgekd export).
    again = CliRunner().invoke(cli, [*BUDGET_RUN, *ONE_COMBINATION_EACH, "--latency-budget", "1000",
                                     "--out", str(out), "--resume"])
    assert again.exit_code == 0, again.output
    assert "select skip" in " ".join(again.stderr.split())
    exported = CliRunner().invoke(cli, ["export", str(out), "--json"])
    assert exported.exit_code == 0, exported.output


def test_a_final_student_over_its_budget_fails_the_run_loudly_with_the_report_written(tmp_path, monkeypatch):
    import edgekd.ship.remote as remote

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    real = remote.deploy_run

    def slower_student(run_dir, opts, progress=None, **kw):
        # The device turns out far slower for the student than at selection (another load,
        # thermal throttling): the final check must catch it. 1e6 x any real latency > 500 ms.
        result = real(run_dir, opts, progress, **kw)
        for r in result["document"]["models"]["student"]["results"]:
            r["latency_ms"] = {k: (v * 1e6 if isinstance(v, float) else [x * 1e6 for x in v])
                               for k, v in r["latency_ms"].items()}
        return result

    monkeypatch.setattr(remote, "deploy_run", slower_student)
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, [*BUDGET_RUN, *ONE_COMBINATION_EACH, "--latency-budget", "500", "--out", str(out)])
    last = _one_line_error(r, "the final student mbv2_cifar_trunc13 measures", "over its budget of 500 ms")
    assert "choose a smaller student" in last
    assert "--resume to measure again" in last
    report = json.loads((out / "report.json").read_text())
    assert report["budget"]["holds"] is False and report["budget"]["final"]["margin_ms"] < 0
    # A resume measures again (the failure is not recorded as done) and fails again here...
    again = CliRunner().invoke(cli, [*BUDGET_RUN, *ONE_COMBINATION_EACH, "--latency-budget", "500", "--out", str(out), "--resume"])
    _one_line_error(again, "over its budget")
    # ... and, on a device back to its speed, the measured pass is recorded.
    monkeypatch.setattr(remote, "deploy_run", real)
    quiet = CliRunner().invoke(cli, [*BUDGET_RUN, *ONE_COMBINATION_EACH, "--latency-budget", "500", "--out", str(out), "--resume"])
    assert quiet.exit_code == 0, quiet.output
    assert json.loads((out / "report.json").read_text())["budget"]["holds"] is True


def test_a_budget_no_candidate_meets_in_compress_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, [*BUDGET_RUN, *ONE_COMBINATION_EACH, "--latency-budget", "0.0001",
                                 "--out", str(out)])
    _one_line_error(r, "no candidate meets 0.0001 ms", "the nearest")
    assert not out.exists()
    # A candidate the method cannot train is left out before anything is measured: AT needs
    # MobileNetV2 stage layers, which a ResNet has not.
    r = CliRunner().invoke(cli, [*BUDGET_RUN, *ONE_COMBINATION_EACH, "--method", "kd+at", "--latency-budget", "1000",
                                 "--set", "budget.candidates=resnet8_cifar_w0.5", "--out", str(out)])
    _one_line_error(r, "no candidate can be trained with kd+at", "resnet8_cifar_w0.5")
    assert not out.exists()


def test_compress_searches_precision_and_size_ranks_by_the_proxy_and_holds(tmp_path, monkeypatch):
    """The budget solver in small: 2 candidates x fp32/int8 x 16/12 px measured in one bundle
    and listed; INT8 that measures slower than FP32 is never an option; the accuracy proxy
    trains the options and its best is the choice; the run trains that architecture at that
    size and the final check, an independent measurement, holds."""
    import edgekd.pipeline.stages.select as select_stage
    from edgekd.train.checkpoint import load_model

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    out = tmp_path / "run"
    real, trials = select_stage.train_stage, []

    def second_trial_interrupted(ctx, stage, *args, **kw):
        if stage.startswith("select_"):
            trials.append(stage.removeprefix("select_"))
            if len(trials) == 2:
                raise KeyboardInterrupt
        return real(ctx, stage, *args, **kw)

    monkeypatch.setattr(select_stage, "train_stage", second_trial_interrupted)
    argv = [*BUDGET_RUN, "--latency-budget", "1000", "--select-epochs", "1", "--no-bench", "--out", str(out)]
    cut = CliRunner().invoke(cli, argv)
    assert cut.exit_code == 130 and "--resume" in cut.stderr, cut.output
    r = CliRunner().invoke(cli, [*argv, "--resume"])
    assert r.exit_code == 0, r.output
    sel = json.loads((out / "select" / "select.json").read_text())
    # The proxy resumed: the first trial's score was kept, the interrupted one ran again, and
    # the trials' record is gone once the selection is done.
    order = [row["key"] for row in sel["candidates"] if row["option"]]
    assert trials == [order[0], order[1], *order[1:]] and not (out / "ckpt" / "select_trials.json").exists()
    assert sel["axes"]["precisions"] == ["fp32", "int8"] and sel["axes"]["input_sizes"] == [16, 12]
    archs = ("resnet8_cifar_w0.5", "mbv2_cifar_trunc13")
    assert {row["key"] for row in sel["candidates"]} == {
        a + s + p for a in archs for s in ("", ".12px") for p in ("", ".int8")}
    assert sel["measured"] + sel["cached"] == 9  # the 8 and the teacher
    rows = {row["key"]: row for row in sel["candidates"]}
    for row in rows.values():
        if row["precision"] == "int8":
            fp32 = rows[row["key"].removesuffix(".int8")]
            assert (row["excluded"] is not None) == (row["value_ms"] >= fp32["value_ms"])
            assert not row["option"]  # the FP32 of the same pair fits 1 s: it is preferred
    options = [row for row in sel["candidates"] if row["option"]]
    assert sorted(o["key"] for o in options) == sorted(a + s for a in archs for s in ("", ".12px"))
    assert [o["macs"] for o in options] == sorted((o["macs"] for o in options), reverse=True)
    scores = sel["proxy"]["scores"]
    assert set(scores) == {o["key"] for o in options} and sel["proxy"]["epochs"] == 1
    best = max(options, key=lambda o: (scores[o["key"]], o["macs"]))
    assert sel["choice"] == {"key": best["key"], "arch": best["arch"], "input_size": best["input_size"],
                             "precision": "fp32"} and "validation" in sel["chosen_by"]
    report = json.loads((out / "report.json").read_text())
    assert report["student"]["arch"] == best["arch"] == report["budget"]["selection"]["chosen"]
    student, _ = load_model(out / "student.pt")
    assert (student.input_size or 16) == best["input_size"]
    final = report["budget"]["final"]
    assert final["input_size"] == best["input_size"] and final["precision"] == "fp32"
    assert report["budget"]["holds"] is True  # checked without the bench stage's samples too


def test_an_int8_choice_exports_int8_and_the_final_check_measures_it(tmp_path, monkeypatch):
    """--budget-precision int8 (no --int8 needed): the run quantizes its student and holds the
    INT8 file to the budget."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, [*BUDGET_RUN, "--latency-budget", "1000", "--budget-precision", "int8",
                                 "--budget-input-sizes", "16", "--select-epochs", "0", "--no-bench",
                                 "--set", "budget.candidates=resnet8_cifar_w0.5", "--out", str(out)])
    assert r.exit_code == 0, r.output
    sel = json.loads((out / "select" / "select.json").read_text())
    assert sel["choice"]["key"] == "resnet8_cifar_w0.5.int8"
    final = json.loads((out / "report.json").read_text())["budget"]["final"]
    assert final["precision"] == "int8" and (out / "student.int8.onnx").is_file()
    bench = json.loads((out / final["results"]).read_text())
    assert set(bench["models"]) == {"teacher", "student.int8"}


def _row(key, arch, macs, p50, precision="fp32", size=16):
    return _record(arch, macs, p50, p50 * 1.02, precision=precision, size=size)


def test_rank_keeps_the_most_accurate_precision_that_fits_and_never_one_slower_than_fp32():
    records = {
        # FP32 fits: INT8, though faster, is not the option (FP32 is the more accurate)
        "a": _row("a", "a", 9e6, 3.0), "a.int8": _row("a.int8", "a", 9e6, 2.0, "int8"),
        # FP32 is over, INT8 fits: INT8 is the option
        "b": _row("b", "b", 8e6, 9.0), "b.int8": _row("b.int8", "b", 8e6, 4.0, "int8"),
        # INT8 slower than FP32: never an option, though it fits
        "c.12px": _row("c.12px", "c", 7e6, 2.0, size=12),
        "c.12px.int8": _row("c.12px.int8", "c", 7e6, 2.5, "int8", size=12),
    }
    rows = rank(records, Budget(latency_ms=5.0, margin=0.05), 5.0)
    by = {r["key"]: r for r in rows}
    assert [r["key"] for r in rows if r["option"]] == ["a", "b.int8", "c.12px"]
    assert not by["a.int8"]["option"] and by["a.int8"]["fits"] and by["a.int8"]["excluded"] is None
    assert by["c.12px.int8"]["fits"] and "slower than fp32" in by["c.12px.int8"]["excluded"]
    assert [r["key"] for r in rows[:3]] == ["a", "b.int8", "c.12px"]


def test_no_fit_names_the_nearest_and_the_input_size_that_would_help():
    from edgekd.selection.select import no_fit_message

    records = {"resnet8_cifar": _row("resnet8_cifar", "resnet8_cifar", 1e6, 4.0, size=32)}
    rows = rank(records, Budget(latency_ms=2.0, batch=1, precision="fp32"), 2.0)
    msg = no_fit_message(Budget(latency_ms=2.0, batch=1, precision="fp32"), 2.0, rows, "local", 32)
    # 2.0 x 0.95 / 4.08 of the pixels: about 21 px a side
    assert "the nearest, resnet8_cifar, measures 4.08 ms" in msg and "--budget-input-sizes 21" in msg
    assert "--budget-precision auto" in msg and "--budget-batch" not in msg
