"""Bring your own teacher: a plain-torchvision state_dict, pretrained weights by name from the
local caches (torchvision's hub folder, the Hugging Face cache), timm teachers and students,
and the one-line refusals of what cannot be used safely or correctly."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torchvision
from click.testing import CliRunner
from PIL import Image
from torchvision import transforms as T

from edgekd.cli import cli
from edgekd.config import build_config
from edgekd.data import load_dataset
from edgekd.errors import EdgeKDError, ModelError
from edgekd.models.pretrained import load_pretrained, torch_hub_cache
from edgekd.pipeline.stages.teacher import load_given_teacher
from tests.conftest import extract_cifar_subset

timm = pytest.importorskip("timm")

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
NORM = ",".join(str(v) for v in (*MEAN, *STD))
FAST = ["--method", "kd", "--epochs", "1", "--no-bench", "--batch-size", "32"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Real CIFAR-10 JPEGs, a third of them re-saved at odd, non-square sizes (so resize and
    crop rounding matter), one grey and one RGBA PNG among them."""
    root = extract_cifar_subset(tmp_path_factory.mktemp("imgs"), ["airplane", "cat", "ship"], 40, 20)
    for i, p in enumerate(sorted(root.rglob("*.jpg"))):
        if i % 3 == 0:
            im = Image.open(p).convert("RGB")
            im.resize((45 + i % 7, 37 + i % 5), Image.BICUBIC).save(p)
    train_cat = sorted((root / "train" / "cat").glob("*.jpg"))
    Image.open(train_cat[0]).convert("L").save(train_cat[0].with_suffix(".png"))
    Image.open(train_cat[1]).convert("RGBA").save(train_cat[1].with_suffix(".png"))
    return root


def _plain_torchvision_teacher(root: Path, out: Path) -> float:
    """Train resnet18 on the folder with torchvision alone; its test accuracy (percent)."""
    tf = T.Compose([T.Resize(64), T.CenterCrop(64), T.ToTensor(), T.Normalize(MEAN, STD)])
    train = torchvision.datasets.ImageFolder(str(root / "train"), tf)
    test = torchvision.datasets.ImageFolder(str(root / "test"), tf)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=len(train.classes))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(3):
        for x, y in torch.utils.data.DataLoader(train, batch_size=32, shuffle=True):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(test, batch_size=17):
            correct += (model(x).argmax(1) == y).sum().item()
    torch.save(model.state_dict(), out)
    return 100.0 * correct / len(test)


def test_a_plain_torchvision_state_dict_reports_the_plain_accuracy(folder, tmp_path):
    weights = tmp_path / "resnet18.pt"
    plain = _plain_torchvision_teacher(folder, weights)
    base = ["compress", "--dataset", f"imagefolder:{folder}", "--teacher", str(weights),
            "--teacher-arch", "resnet18", "--input-size", "64", "--student", "resnet8_cifar_w0.5",
            *FAST, "--out", str(tmp_path / "run")]
    refused = CliRunner().invoke(cli, base)
    assert refused.exit_code != 0 and "--teacher-norm" in refused.output
    assert not (tmp_path / "run").exists()  # refused before anything is written
    r = CliRunner().invoke(cli, [*base, "--teacher-norm", NORM])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["teacher"]["accuracy"] == round(plain, 2)
    teacher = torch.load(tmp_path / "run" / "teacher.pt", weights_only=True)
    assert teacher["training"]["last_epoch"]["test_acc"] == plain  # exactly, not rounded
    data = json.loads((tmp_path / "run" / "data.json").read_text())
    assert data["sizes"]["test"] == 60 and "CenterCrop(64)" in data["preprocessing"]
    cfg = (tmp_path / "run" / "config.yaml").read_text()
    assert NORM in cfg and str(weights) in cfg


def test_state_dicts_that_do_not_fit_say_what_they_are(folder, tmp_path):
    data = load_dataset(f"imagefolder:{folder}", 32)
    r34 = tmp_path / "r34.pt"
    torch.save(torchvision.models.resnet34(num_classes=3).state_dict(), r34)
    tcfg = build_config(None, "digits", {"teacher.checkpoint": str(r34), "teacher.arch": "resnet18",
                                         "teacher.norm": "imagenet"}, []).teacher
    with pytest.raises(ModelError, match="it is a resnet34: pass --teacher-arch resnet34"):
        load_given_teacher(tcfg, data)
    r18 = tmp_path / "r18_1000.pt"
    torch.save(torchvision.models.resnet18().state_dict(), r18)
    tcfg.checkpoint = str(r18)
    with pytest.raises(ModelError, match="has 1000 classes, the data set 3: add --teacher-finetune-epochs"):
        load_given_teacher(tcfg, data)
    model, _ = load_given_teacher(tcfg, data, new_head=True)  # what the finetune stage loads
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 3)
    assert torch.equal(model.body.layer1[0].conv1.weight, torch.load(r18)["layer1.0.conv1.weight"])
    assert model.mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])


@pytest.mark.parametrize("norm", ["0.5,0.5,0.5,0,1,1", "0.5,0.5,0.5", "imagenett", "a,b,c,d,e,f"])
def test_teacher_norm_needs_three_means_and_three_positive_stds(norm):
    r = CliRunner().invoke(cli, ["compress", "--teacher-norm", norm, "--no-bench"])
    assert r.exit_code != 0
    assert "six numbers" in r.output and "positive stds" in " ".join(r.output.split())


@pytest.mark.parametrize("name, close", [("resnt18", "resnet18"), ("timm:resnet18x", "timm:resnet18"),
                                         ("mbv2_cifar_trunk5", "mbv2_cifar_trunc5")])
def test_unknown_names_suggest_close_ones(name, close):
    r = CliRunner().invoke(cli, ["compress", "--student", name, "--no-bench"])
    assert r.exit_code != 0 and f"did you mean {close}" in " ".join(r.output.split())


def test_a_torch_export_program_is_refused_as_code(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(3))
    model(torch.rand(1, 3, 8, 8))
    path = tmp_path / "teacher.pt2"
    torch.export.save(torch.export.export(model, (torch.rand(1, 3, 8, 8),)), path)
    r = CliRunner().invoke(cli, ["compress", "--teacher", str(path), "--teacher-arch", "resnet18",
                                 "--input-size", "32", "--no-bench", "--out", str(tmp_path / "run")])
    text = " ".join(r.output.split())
    assert r.exit_code != 0 and "torch.export program, refused" in text and "could run code" in text


def test_torchvision_weights_by_name_come_from_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    cache = torch_hub_cache()
    assert str(cache).startswith(str(tmp_path))

    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ModelError, match=f"not in {cache} and could not be downloaded"):
        load_pretrained("torchvision:resnet18.IMAGENET1K_V1")
    cache.mkdir(parents=True, exist_ok=True)
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, cache / os.path.basename(weights.url))
    model, info = load_pretrained("torchvision:resnet18.IMAGENET1K_V1", num_classes=3)
    assert (info.arch, info.input_size, info.num_classes) == ("resnet18", 224, 1000)
    assert model.mean.flatten().tolist() == pytest.approx(list(weights.transforms().mean))
    assert torch.equal(model.body.conv1.weight, state["conv1.weight"])
    assert model.body.fc.out_features == 3
    with pytest.raises(ModelError, match="has no weights 'IMAGENET9K'; use one of IMAGENET1K_V1"):
        load_pretrained("torchvision:resnet18.IMAGENET9K")
    # a config file naming the weights but not the architecture: refused, not mislabelled
    tcfg = build_config(None, "digits", {"teacher.checkpoint": "torchvision:resnet18.IMAGENET1K_V1"}, []).teacher
    with pytest.raises(ModelError, match="is a resnet18, not a mbv2_cifar: drop --teacher-arch"):
        load_given_teacher(tcfg, load_dataset("digits", 32))


def _fake_hf_cache(root: Path, repo: str, state: dict) -> None:
    """The Hugging Face hub cache layout holding `state` as model.safetensors."""
    from safetensors.torch import save_file

    base = root / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    (base / "snapshots" / commit).mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, base / "snapshots" / commit / "model.safetensors")


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    root = tmp_path / "hf"
    root.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return root


def test_timm_weights_offline_name_the_cache_then_load_from_it(hf_cache):
    with pytest.raises(ModelError, match="test_resnet.r160_in1k are not in .*models--timm--test_resnet"):
        load_pretrained("timm:test_resnet.r160_in1k")
    state = timm.create_model("test_resnet", num_classes=1000).state_dict()
    _fake_hf_cache(hf_cache, "timm/test_resnet.r160_in1k", state)
    model, info = load_pretrained("timm:test_resnet.r160_in1k", num_classes=3)
    assert (info.arch, info.input_size, info.mean) == ("timm:test_resnet", 160, (0.5, 0.5, 0.5))
    assert torch.equal(model.body.conv1[0].weight, state["conv1.0.weight"])
    assert model.body.get_classifier().out_features == 3
    with pytest.raises(ModelError, match="no tag 'nope' for test_resnet; use one of timm:test_resnet.r160_in1k"):
        load_pretrained("timm:test_resnet.nope")


def test_a_pretrained_timm_teacher_is_fine_tuned_and_distilled_into_a_timm_student(folder, hf_cache, tmp_path):
    _fake_hf_cache(hf_cache, "timm/test_resnet.r160_in1k",
                   timm.create_model("test_resnet", num_classes=1000).state_dict())
    out = tmp_path / "run"
    args = ["compress", "--dataset", f"imagefolder:{folder}", "--teacher", "timm:test_resnet.r160_in1k",
            "--input-size", "32", "--student", "timm:test_efficientnet", *FAST, "--out", str(out)]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code != 0 and "has 1000 classes, the data set 3: add --teacher-finetune-epochs" in " ".join(r.output.split())
    r = CliRunner().invoke(cli, [*args, "--teacher-finetune-epochs", "1"])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    assert report["teacher"]["arch"] == "timm:test_resnet"
    assert report["student"]["arch"] == "timm:test_efficientnet"
    state = json.loads((out / "state.json").read_text())
    assert {"finetune", "teacher", "student", "export"} <= set(state)
    teacher = torch.load(out / "teacher.pt", weights_only=True)
    assert teacher["mean"] == pytest.approx([0.5, 0.5, 0.5])  # the weights' own preprocessing
    assert teacher["training"]["source"] == "timm:test_resnet.r160_in1k"
    assert (out / "student.onnx").is_file()
    # resumed: every stage, fine-tuning included, is found valid
    r = CliRunner().invoke(cli, [*args, "--teacher-finetune-epochs", "1", "--resume"])
    assert r.exit_code == 0 and "finetune skip" in " ".join(r.output.split())


def test_timm_is_an_optional_extra(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_timm(name, *a, **k):
        if name == "timm" or name.startswith("timm."):
            raise ImportError("No module named 'timm'")
        return real(name, *a, **k)

    from edgekd.models import registry

    registry._timm_names.cache_clear()
    monkeypatch.setattr(builtins, "__import__", no_timm)
    with pytest.raises(EdgeKDError, match=r"pip install 'edgekd\[timm\]'"):
        registry.create_model("timm:resnet18", 3)
    registry._timm_names.cache_clear()
