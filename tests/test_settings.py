"""One declaration per setting: flags, help, checks and config.yaml all come from the field.

The first test edits a copy of the package the way a developer would add a setting (one line
in one section) and runs the real command line on it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from edgekd.cli import cli
from edgekd.cli.compress import SETTINGS
from edgekd.cli.select import BUDGET
from edgekd.config import RULES, Budget, RunConfig, build_config
from edgekd.config.settings import entries
from edgekd.config.targets import TARGETS
from edgekd.errors import EdgeKDError

PACKAGE = Path(__file__).resolve().parents[1] / "edgekd"
NEW_SETTING = ('    probe_ms: float | None = setting(None, flag="--probe-budget", gt=0, '
               'help="A test-only budget setting.")\n')


# Runs edgekd's command line (click's test runner, output at 200 columns) once per argument
# list given as JSON, in one interpreter: the package imports once, not five times.
DRIVER = """
import json, sys
from click.testing import CliRunner
from edgekd.cli import cli
results = []
for args in json.loads(sys.argv[1]):
    r = CliRunner().invoke(cli, args, terminal_width=200)
    results.append({"code": r.exit_code, "stdout": r.stdout, "stderr": r.stderr})
print(json.dumps(results))
"""


def _edgekd(root: Path, *calls: list[str]) -> list[dict]:
    """Each call's exit code, stdout and stderr, run on the package under `root`."""
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(calls)], env=env, cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_a_setting_added_in_one_line_reaches_both_commands_checks_and_config_yaml(tmp_path):
    copy = tmp_path / "edgekd"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    budget = copy / "config" / "budget.py"
    text = budget.read_text()
    anchor = "    select_images: int = setting(10000, ge=1)  # a stratified subset of the training split\n"
    assert anchor in text
    budget.write_text(text.replace(anchor, anchor + NEW_SETTING))

    helps = _edgekd(tmp_path, ["compress", "--help"], ["select", "--help"],
                    ["compress", "--print-config"], ["compress", "--probe-budget", "2.5", "--print-config"],
                    ["compress", "--probe-budget", "-1", "--print-config"])
    for r in helps[:2]:
        assert r["code"] == 0, r["stderr"]
        assert "--probe-budget" in r["stdout"] and "A test-only budget setting." in r["stdout"]
    default, given, bad = helps[2:]
    assert default["code"] == 0, default["stderr"]
    assert yaml.safe_load(default["stdout"])["budget"]["probe_ms"] is None
    assert yaml.safe_load(given["stdout"])["budget"]["probe_ms"] == 2.5
    assert bad["code"] == 2 and "--probe-budget must be > 0, got -1" in bad["stderr"]
    # The untouched package (this process's) does not know it: the test saw the line it
    # added, nothing else.
    r = CliRunner().invoke(cli, ["compress", "--help"], terminal_width=200)
    assert r.exit_code == 0 and "--probe-budget" not in r.stdout


def test_compress_and_select_take_the_budget_flags_from_one_declaration():
    budget_flags = {e.setting.flag for e in entries(Budget) if e.setting.flag}
    compress_budget = {f for f, group in SETTINGS.flags.items() if group[0].key.startswith("budget.")}
    assert compress_budget == budget_flags
    # select measures, it does not train: only the training of the top candidates is compress's
    assert set(BUDGET.flags) == budget_flags - {"--select-epochs", "--select-top"}
    for flag in BUDGET.flags:  # the same help on both commands
        assert BUDGET.flags[flag][0].setting.help == SETTINGS.flags[flag][0].setting.help


def test_every_compress_flag_is_a_declared_setting_and_sets_its_keys():
    keys = {e.key for e in entries(RunConfig)}
    for flag, group in SETTINGS.flags.items():
        assert {e.key for e in group} <= keys, flag
    # One flag declared in two places sets both: the teacher's and the student's batch size.
    assert {e.key for e in SETTINGS.flags["--batch-size"]} == {"teacher.train.batch_size",
                                                                 "student.train.batch_size"}
    cfg = build_config(overrides=SETTINGS.given({"batch_size": 32, "epochs": 3}))
    assert cfg.teacher.train.batch_size == cfg.student.train.batch_size == 32
    assert cfg.student.train.epochs == 3 and cfg.teacher.train.epochs == 10


def test_print_config_is_the_yaml_a_run_writes_and_reads_back(tmp_path):
    r = CliRunner().invoke(cli, ["compress", "--epochs", "7", "--kd-alpha", "0.3", "--print-config"])
    assert r.exit_code == 0, r.output
    file = tmp_path / "config.yaml"
    file.write_text(r.output)
    again = build_config(file)
    assert again.student.train.epochs == 7 and again.kd.alpha == 0.3
    assert again.to_yaml() == r.output


@pytest.mark.parametrize("sets, message", [
    (["kd.alpha=1.5"], "--kd-alpha must be in [0, 1], got 1.5"),
    (["ig.p=-0.1"], "--ig-p must be in [0, 1], got -0.1"),
    (["budget.margin=1"], "--margin must be in [0, 1), got 1"),
    (["ig.steps=0"], "--ig-steps must be >= 1, got 0"),
    (["ig.baseline=magic"], "--ig-baseline 'magic': use one of zeros, blur, noise"),
    (["student.train.optimizer=rmsprop"], "student.train.optimizer 'rmsprop': use one of adam, sgd"),
    (["teacher.train.lr=0"], "teacher.train.lr must be > 0, got 0"),
    (["export.target=tpu"], "export.target 'tpu': use one of jetson-jp5"),
    (["export.opset=18", "export.target=jetson-jp5"], "opset 18 cannot be parsed on jetson-jp5"),
    (["budget.candidates=resnet8_cifar,nope"], "unknown candidate 'nope'"),
    (["device=tpu"], "device 'tpu': use auto, cpu, cuda or cuda:N"),
    (["distill.indistill_a=0", "distill.indistill_b=0"], "a + b >= 1"),
    (["distill.indistill_share=1.5"], "--warmup-share must be in (0, 1), got 1.5"),
    (["student.train.amp=fp8"], "student.train.amp 'fp8': use one of auto, bf16, off"),
])
def test_each_declared_check_refuses_with_the_setting_named(sets, message):
    with pytest.raises(EdgeKDError, match=re.escape(message)):
        build_config(sets=sets)


RULE_CASES = {
    0: dict(dataset="cifar10", sets=["student.arch=resnet8_cifar", "budget.latency_ms=5"]),
    1: dict(dataset="cifar10", sets=["student.arch=none"]),
    2: dict(sets=["export.enabled=false", "bench.enabled=false"]),
    3: dict(overrides={"student.arch": "resnet8_cifar"}, sets=["export.enabled=false"]),
    4: dict(sets=["export.int8_qat_epochs=2"]),
    5: dict(overrides={"student.arch": "resnet8_cifar"},
            sets=["export.enabled=false", "bench.enabled=false", "export.int8=true"]),
    6: dict(sets=["distill.aux_teacher=mbv2_cifar_w0.5"], overrides={"method": "kd"}),
    7: dict(sets=["distill.indistill_a=0", "distill.indistill_b=0"]),
    8: dict(overrides={"student.arch": "resnet8_cifar", "method": "kd+at", "student.input_size": 8}),
    9: dict(overrides={"student.arch": "resnet8_cifar", "method": "kd+at",
                       "distill.soft_labels": "cached"}),
    10: dict(overrides={"method": "student", "distill.soft_labels": "cached"}),
    11: dict(overrides={"teacher.finetune_epochs": 2}),
}


def test_every_rule_across_settings_fires_on_a_case_of_its_own(monkeypatch):
    """Each rule is the first one broken by some configuration: none is dead code."""
    import edgekd.config as config

    assert sorted(RULE_CASES) == list(range(len(RULES)))
    for index, kwargs in RULE_CASES.items():
        with monkeypatch.context() as m:  # the settings the case asks for, unchecked
            m.setattr(config, "validate", lambda cfg: None)
            cfg = config.build_config(**kwargs)
        broken = [i for i, rule in enumerate(RULES) if rule.broken(cfg)]
        assert broken[:1] == [index], (index, broken)
        with pytest.raises(EdgeKDError) as e:
            build_config(**kwargs)
        assert str(e.value) == RULES[index].message(cfg)


def test_a_budget_searches_a_fixed_student_input_size_and_any_precision():
    """Once refused: a --student-input-size with a budget fixes the size the search measures;
    InDistill (the digits default) trains a student at a lower size; an INT8 budget no longer
    needs --int8 spelled out (the run quantizes what the selection chose)."""
    cfg = build_config(overrides={"student.input_size": 12})
    assert cfg.budget.active and "indistill" in cfg.methods
    assert cfg.budget.sizes(16, cfg.student.input_size) == [12]
    assert build_config(sets=["budget.precision=int8"]).budget.precisions() == ("int8",)


def test_flags_imply_what_they_need_and_train_means_no_checkpoint(tmp_path):
    cfg = build_config(overrides={"budget.precision": "int8"})
    assert cfg.export.int8 and cfg.budget.precision == "int8"
    cfg = build_config(overrides={"student.arch": "resnet8_cifar", "export.int8_qat_epochs": 2})
    assert cfg.export.int8
    file = tmp_path / "c.yaml"
    file.write_text("teacher:\n  checkpoint: some/teacher.pt\n")
    assert build_config(file).teacher.checkpoint == "some/teacher.pt"
    assert build_config(file, overrides={"teacher.checkpoint": "train"}).teacher.checkpoint is None


def test_help_texts_come_from_the_code_tables():
    r = CliRunner().invoke(cli, ["export", "--help"], terminal_width=80)
    for t in TARGETS.values():
        assert re.search(rf"{re.escape(t.name)}\s+{t.opset}/{t.max_opset}\s+IR", r.output), t.name
    assert max(len(line) for line in r.output.splitlines()) <= 80
    r = CliRunner().invoke(cli, ["compress", "--help"], terminal_width=80)
    from edgekd.config import METHODS

    assert ", ".join(METHODS) in " ".join(r.output.split())


def test_a_flag_with_choices_is_refused_by_the_parser_naming_them(tmp_path):
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["compress", "--ig-baseline", "magic", "--out", str(out)])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "'magic' is not one of 'zeros', 'blur', 'noise'" in r.output
    assert not out.exists()
