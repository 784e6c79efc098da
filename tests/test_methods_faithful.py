"""The methods as the papers' public code has them (docs/methods.md), the fair epoch budget, the
clean-teacher option and the `--recipe` flag."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from click.testing import CliRunner

from edgekd.attribution.overlay import IGOverlay
from edgekd.cli import cli
from edgekd.config import build_config, config_from_dict, describe_recipe, recipe_deviations
from edgekd.data.augment import AugmentSettings, random_crop_flip
from edgekd.distill.indistill import curriculum, warmup_epochs
from edgekd.distill.losses import DistillObjective, KDLoss, Outputs, PKTLoss
from edgekd.distill.methods import auto_at_layer, build_terms
from edgekd.errors import EdgeKDError
from edgekd.models import create_model
from edgekd.models.mobilenetv2_cifar import TRUNCATIONS
from edgekd.pipeline.stages.warmup import epoch_plan
from edgekd.recipes import PAPER
from tests.conftest import TINY


# ---- AT / FitNet layer -----------------------------------------------------------------
def _public_code_index(removed: int) -> int:
    # UTILS_TORCH.py `middle_index`: len(features) of the full 19-module network // d
    d = {3: 2, 5: 2, 7: 2, 9: 4, 11: 4, 13: 4, 15: 8, 17: 20}[removed]
    return 19 // d


@pytest.mark.parametrize("removed", TRUNCATIONS)
def test_at_layer_indexes_the_full_network_for_every_truncation(removed):
    student, teacher = create_model(f"mbv2_cifar_trunc{removed}", 10), create_model("mbv2_cifar", 10)
    layer = f"body.features.{_public_code_index(removed)}"
    assert auto_at_layer(student, teacher, removed) == (layer, layer)


def test_at_and_fitnet_default_to_features_9_for_the_4x_student_and_teacher():
    cfg = build_config(overrides={"method": "kd+at+fitnet"})
    student, teacher = create_model("mbv2_cifar_trunc5", 10), create_model("mbv2_cifar", 10)
    terms, _ = build_terms(["kd", "at", "fitnet"], cfg, student, teacher, 16)
    at, fitnet = terms[1][1], terms[2][1]
    assert at.student_paths == at.teacher_paths == ("body.features.9",)
    assert fitnet.student_paths == fitnet.teacher_paths == ("body.features.9",)


# ---- InDistill curriculum --------------------------------------------------------------
def test_curriculum_gives_three_layers_3_4_5_epochs_at_the_defaults():
    cfg = build_config()
    spans = curriculum(3, cfg.distill.indistill_a, cfg.distill.indistill_b)
    assert [b - a + 1 for a, b in spans] == [3, 4, 5]
    assert spans == [(1, 3), (4, 7), (8, 12)]  # the public code's switch points a+1, a+1+a+2
    assert warmup_epochs(3) == 12
    assert curriculum(3, a=0, b=1) == [(1, 1), (2, 3), (4, 6)]


# ---- fair epoch budget -------------------------------------------------------------------
def test_the_warmup_comes_out_of_the_students_epochs():
    cfg = build_config(overrides={"method": "indistill+kd", "student.train.epochs": 20,
                                  "student.arch": "mbv2_cifar_trunc5", "recipe": "paper"})
    plan = epoch_plan(cfg, 10, 16)
    assert (plan["warmup"], plan["distill"], plan["total"]) == (12, 8, 20)
    assert plan["warmup_per_layer"] == [3, 4, 5] and plan["warmup_rule"] == "2 + 1*l epochs per layer"
    cfg.method = "kd"
    assert epoch_plan(cfg, 10, 16) == {"warmup": 0, "distill": 20, "total": 20}
    cfg.method = "indistill+kd"
    cfg.student.train.epochs = 12
    with pytest.raises(EdgeKDError, match="takes 12 of the student's 12 epochs .*--epochs 13"):
        epoch_plan(cfg, 10, 16)


def test_the_warmup_is_a_share_of_the_budget_by_default():
    cfg = build_config(overrides={"method": "indistill+kd", "student.arch": "mbv2_cifar_trunc5"})
    for total, layers in ((15, [1, 1, 1]), (30, [1, 2, 3]), (60, [3, 4, 5]), (100, [5, 7, 8])):
        cfg.student.train.epochs = total
        plan = epoch_plan(cfg, 10, 16)
        assert plan["warmup_per_layer"] == layers, total
        assert (plan["warmup"], plan["distill"]) == (sum(layers), total - sum(layers))
        assert plan["warmup_rule"] == f"share 0.2 of {total} epochs"
    # the papers' 12 of 60 at share 0.2: both forms agree there
    assert curriculum(3, 2, 1, share=0.2, total=60) == curriculum(3, 2, 1)
    cfg.student.train.epochs = 3  # one epoch per layer at least leaves nothing
    with pytest.raises(EdgeKDError, match="takes 3 of the student's 3 epochs .*--epochs 4 or more$"):
        epoch_plan(cfg, 10, 16)


def test_a_warmup_longer_than_the_budget_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["compress", *TINY, "--method", "indistill+kd", "--student",
                                 "mbv2_cifar_w0.25", "--teacher-arch", "mbv2_cifar_w0.5",
                                 "--epochs", "3", "--warmup-share", "none", "--out", str(out)])
    assert r.exit_code == 2
    assert "InDistill warm-up takes 12 of the student's 3 epochs (3 + 4 + 5)" in r.output
    assert not out.exists()


# ---- PKT scale -----------------------------------------------------------------------------
def test_pkt_is_batch_size_times_the_mean_over_all_entries():
    torch.manual_seed(0)
    fs, ft = torch.randn(8, 5), torch.randn(8, 7)
    term = PKTLoss("s", "t")
    ours = term(Outputs(torch.zeros(8, 2), {"s": fs}), Outputs(torch.zeros(8, 2), {"t": ft}), None)

    def probs(f):  # Passalis' / RepDistiller's cosine kernel, row-normalised
        f = f / f.norm(dim=1, keepdim=True)
        sim = (f @ f.t() + 1) / 2
        return sim / sim.sum(1, keepdim=True)

    p_s, p_t = probs(fs), probs(ft)
    theirs = torch.mean(p_t * torch.log((p_t + 1e-7) / (p_s + 1e-7)))  # mean over B x B
    assert ours.item() == pytest.approx(8 * theirs.item(), rel=1e-5)


# ---- the teacher's view under IG overlays ---------------------------------------------------
def test_clean_view_has_the_overlays_geometry_without_the_overlay():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    maps = torch.rand(6, 8, 8)
    settings = AugmentSettings(crop_padding=2, hflip=True)
    mixed, clean = IGOverlay(maps, settings, p=1.0, blend=0.5, clean_for_teacher=True)(
        x, torch.arange(6), torch.Generator().manual_seed(3))
    alone = IGOverlay(maps, settings, p=1.0, blend=0.5)(x, torch.arange(6),
                                                        torch.Generator().manual_seed(3))
    assert torch.equal(mixed, alone)  # the student's input does not change
    # The clean view is the same crop and flip of the image alone (the map rides as a channel).
    both = random_crop_flip(torch.cat([x.float() / 255, maps[:, None]], 1), settings,
                            torch.Generator().manual_seed(3))
    assert torch.equal(clean, both[:, :3])
    assert not torch.equal(clean, mixed)


def test_distill_objective_feeds_the_teacher_its_own_view():
    torch.manual_seed(0)
    student, teacher = (torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(768, 3))
                        for _ in range(2))
    x, x_t, y = torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    obj = DistillObjective(teacher, [(1.0, KDLoss(2.0))], task_weight=0.0)
    student.eval()
    with torch.no_grad():
        loss_own, logits = obj(student, x, y, None)
        loss_clean, _ = obj(student, x, y, None, teacher_x=x_t)
        expected = KDLoss(2.0)(Outputs(logits), Outputs(teacher(x_t)), y)
    assert loss_clean.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss_clean.item() != pytest.approx(loss_own.item(), rel=1e-3)


# ---- recipes -------------------------------------------------------------------------------
def test_paper_recipe_sets_the_papers_setup_and_round_trips():
    cfg = build_config(dataset="cifar10", recipe="paper")
    s = cfg.student.train
    assert (s.optimizer, s.lr, s.schedule, s.weight_decay, s.batch_size, s.epochs, s.amp) == \
        ("adam", 1e-3, "constant", 0.0, 64, 100, "off")
    assert cfg.distill.indistill_share is None  # the absolute 3 + 4 + 5 warm-up epochs
    assert (cfg.kd.alpha, cfg.kd.temperature, cfg.distill.at_weight) == (0.01, 2.5, 0.8)
    assert cfg.data.val_fraction == 0.0 and cfg.data.train_subset is None
    assert (cfg.teacher.norm, cfg.student.norm) == ("cifar10", "none")
    assert recipe_deviations(cfg) == {}
    again = config_from_dict(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg and again.recipe == "paper"


def test_overrides_on_a_recipe_are_allowed_and_listed():
    cfg = build_config(dataset="cifar10", recipe="paper",
                       overrides={"student.train.epochs": 3}, sets=["kd.alpha=0.1"])
    assert recipe_deviations(cfg) == {"student.train.epochs": {"recipe": 100, "value": 3},
                                      "kd.alpha": {"recipe": 0.01, "value": 0.1}}
    assert "student.train.epochs 100 -> 3" in describe_recipe(cfg)
    # edgekd's own recipe: deviations from the data set's defaults
    assert recipe_deviations(build_config(overrides={"kd.alpha": 0.3})) == {
        "kd.alpha": {"recipe": 0.5, "value": 0.3}}
    assert set(PAPER) >= {"student.train.epochs", "teacher.train.epochs", "kd.alpha"}


def test_unknown_recipe_is_one_line(tmp_path):
    r = CliRunner().invoke(cli, ["compress", "--recipe", "fast", "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "unknown recipe 'fast': use one of edgekd, paper" in r.output
    assert not (tmp_path / "r").exists()


def test_paper_recipe_run_records_it_and_the_ablation_header_lists_it(tmp_path):
    out = tmp_path / "exp"
    r = CliRunner().invoke(cli, [
        "experiment", "ablation", "--recipe", "paper", "--methods", "student,kd", "--seeds", "1",
        "--teacher-arch", "mbv2_cifar_w0.25", "--student", "mbv2_cifar_trunc13",
        "--set", "data.input_size=16", "--teacher-epochs", "1", "--epochs", "1",
        "--subset", "120", "--out", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    md = (out / "ablation.md").read_text()
    assert "Recipe: paper (deviations: " in md and "student.train.epochs 100 -> 1" in md
    assert "| kd | 1 | 1 |" in md  # n, then the row's total epochs
    run_cfg = yaml.safe_load((out / "runs" / "kd" / "s0" / "config.yaml").read_text())
    assert run_cfg["settings"]["recipe"] == "paper"
    assert run_cfg["recipe"]["deviations"]["teacher.train.epochs"] == {"recipe": 100, "value": 1}
    report = json.loads((out / "runs" / "kd" / "s0" / "report.json").read_text())
    assert report["recipe"]["name"] == "paper"
    assert report["dataset"]["sizes"]["val"] == 0  # no validation hold-out
    # the student is fed raw pixels, the teacher CIFAR-normalised ones (the papers' code)
    from edgekd.train import checkpoint

    s, _ = checkpoint.load_model(out / "runs" / "kd" / "s0" / "student.pt")
    t, _ = checkpoint.load_model(out / "teacher" / "teacher.pt")
    assert s.mean.flatten().tolist() == [0.0, 0.0, 0.0]
    assert t.std.flatten().tolist() == pytest.approx([0.2471, 0.2435, 0.2616])


def test_an_ablation_whose_budget_cannot_hold_the_warmup_fails_before_training(tmp_path):
    out = tmp_path / "exp"
    r = CliRunner().invoke(cli, ["experiment", "ablation", "--methods", "kd,indistill+kd",
                                 "--seeds", "1", "--epochs", "3", "--teacher-arch", "mbv2_cifar_w0.5",
                                 "--student", "mbv2_cifar_w0.25", "--out", str(out)])
    assert r.exit_code == 2 and "takes 3 of the student's 3 epochs" in r.output
    assert "--epochs 4" in r.output
    assert not (out / "teacher").exists()  # nothing trained, not even the shared teacher


def test_recipe_is_not_a_set_key_and_old_runs_reopen_with_new_defaults(tmp_path):
    with pytest.raises(EdgeKDError, match="choose it with --recipe paper"):
        build_config(sets=["recipe=paper"])
    from edgekd.pipeline.rundir import RunDir

    cfg = build_config()
    run = RunDir(tmp_path / "r")
    run.open(cfg)
    doc = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    for gone in ("recipe",):  # a run made before these settings existed
        doc["settings"].pop(gone)
    doc["settings"]["distill"].pop("teacher_input")
    (tmp_path / "r" / "config.yaml").write_text(yaml.safe_dump(doc))
    assert run.open(cfg, resume=True) == "resumed"
