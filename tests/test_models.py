import functools

import pytest
import torch

from edgekd.distill.hooks import FeatureTap
from edgekd.errors import ModelError
from edgekd.models import create_model, describe, list_models
from edgekd.models.profile import count_macs, count_params

PAPER_TABLE = {  # docs/methods.md: L removed -> (params, CF)
    3: (1_019_402, 2.19), 5: (543_498, 4.12), 7: (306_954, 7.29), 9: (185_738, 12.04),
    11: (77_194, 28.97), 13: (40_970, 54.59), 15: (16_042, 139.43), 17: (1_994, 1121.71),
}


def test_teacher_matches_paper():
    info = describe("mbv2_cifar")
    assert info.params == 2_236_682
    assert abs(info.macs / 1e6 - 88.0) < 0.1  # docs/methods.md: about 88.0 M MACs


@pytest.mark.parametrize("removed", sorted(PAPER_TABLE))
def test_truncated_students_match_paper(removed):
    params, cf = PAPER_TABLE[removed]
    info = describe(f"mbv2_cifar_trunc{removed}")
    assert info.params == params
    assert info.compression_factor == cf


def test_main_student_macs_and_cifar_strides():
    info = describe("mbv2_cifar_trunc5")
    assert abs(info.macs / 1e6 - 58.7) < 0.1
    # The CIFAR stride changes keep 32x32 in the stem: features[0] output is 32x32.
    model = create_model("mbv2_cifar", 10)
    x = torch.rand(1, 3, 32, 32)
    assert model.body.features[0](x).shape[-1] == 32
    assert model.body.features[:4](x).shape[-1] == 32  # stage 24 at stride 1
    assert model.body.features[:5](x).shape[-1] == 16


def test_width_family_reduces_compute_not_only_params():
    teacher = describe("mbv2_cifar")
    prev = teacher.macs
    for w in ("0.75", "0.5", "0.35", "0.25"):
        info = describe(f"mbv2_cifar_w{w}")
        assert info.macs < prev
        prev = info.macs
    # The narrowest is far cheaper than the paper's 4.1x student, which keeps ~2/3 of the MACs.
    assert describe("mbv2_cifar_w0.25").macs < 0.2 * describe("mbv2_cifar_trunc5").macs


def test_torchvision_model_by_name_runs_on_small_images():
    model = create_model("resnet18", num_classes=7)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 7)
    assert describe("resnet18", num_classes=7, input_size=32).family == "torchvision"


def test_unknown_model_suggests_close_names():
    with pytest.raises(ModelError) as e:
        create_model("mobilenet_v9", 10)
    assert "did you mean mobilenet_v2" in str(e.value) and "`edgekd models`" in str(e.value)
    with pytest.raises(ModelError) as e:
        create_model("zzzz", 10)
    assert "did you mean" not in str(e.value)


def test_normalisation_is_inside_the_model():
    model = create_model("mbv2_cifar_trunc17", 10, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)).eval()
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(model(x), model.body((x - 0.5) / 0.25))


def test_mac_counter_counts_a_known_conv():
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Flatten(),
                               torch.nn.Linear(8 * 4 * 4, 5))
    assert count_macs(conv, 4) == 8 * 4 * 4 * 3 * 9 + 8 * 4 * 4 * 5
    assert count_params(conv) == 3 * 8 * 9 + 8 + 128 * 5 + 5


def test_builtin_list_contains_families():
    names = list_models()
    assert "mbv2_cifar" in names and "mbv2_cifar_trunc17" in names and "mbv2_cifar_w0.5" in names


# ---- the fast student families (depth x width, MobileNetV3, ShuffleNetV2, CIFAR ResNets) ----
NEW_FAMILIES = ("depth-width", "mobilenetv3-cifar", "shufflenetv2-cifar", "resnet-cifar")


@functools.cache
def _families() -> dict[str, str]:
    """Each built-in model's family, from describe(): described once for the four families
    below rather than all 42 models again for each of them."""
    return {n: describe(n).family for n in list_models()}


def _names(family):
    return [n for n, f in _families().items() if f == family]


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_new_families_are_registered_with_cifar_strides(family):
    names = _names(family)
    assert len(names) >= 3
    for name in names:
        model = create_model(name, 7).eval()
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 7)
        last = "body." + model.body.stage_paths[-1]
        # total stride 8, as the CIFAR MobileNetV2: a 32x32 image ends as a 4x4 or 8x8 map
        with torch.no_grad(), FeatureTap(model, [last]) as tap:
            model(torch.rand(1, 3, 32, 32))
        assert tap[last].shape[-1] in (4, 8), name
        info = describe(name, num_classes=7)
        assert info.macs > 0 and info.params == count_params(model)


def test_depth_width_grid_cuts_layers_and_macs():
    full = create_model("mbv2_cifar_w0.5", 10).body
    half = create_model("mbv2_cifar_d0.5_w0.5", 10).body
    quarter = create_model("mbv2_cifar_d0.25_w0.5", 10).body
    assert (len(full.features), len(half.features), len(quarter.features)) == (19, 13, 9)
    assert describe("mbv2_cifar_d0.25_w0.5").macs < describe("mbv2_cifar_d0.5_w0.5").macs \
        < describe("mbv2_cifar_w0.5").macs
    assert half.stage_paths[-1] == "features.11"  # ceil(n / 2) blocks: 1, 1, 2, 2, 2, 2, 1


def test_cifar_resnets_have_he_et_al_sizes():
    # He et al. 2016, Table 6: ResNet-20 0.27 M parameters, ~41 M MACs at 32x32
    assert describe("resnet20_cifar").params == 272_474
    assert abs(describe("resnet20_cifar").macs / 1e6 - 40.8) < 0.5
    assert describe("resnet8_cifar").params < describe("resnet14_cifar").params \
        < describe("resnet20_cifar").params < describe("resnet20_cifar_w2").params


def test_warmup_and_at_layers_for_the_new_families():
    from edgekd.distill.indistill import MappingError, auto_mapping, build_mapping
    from edgekd.distill.methods import auto_at_layer
    from edgekd.errors import EdgeKDError

    teacher = create_model("mbv2_cifar", 10)
    # a dense ResNet pairs each stage with the teacher stage of the same size and width
    pairs = build_mapping(create_model("resnet20_cifar", 10), teacher,
                          auto_mapping(create_model("resnet20_cifar", 10), teacher), 32)
    assert [(p.student, p.teacher, p.student_channels, p.teacher_channels) for p in pairs] == [
        ("body.layer1", "body.features.1", 16, 16), ("body.layer2", "body.features.6", 32, 32),
        ("body.layer3", "body.features.10", 64, 64)]
    # the grid pairs stage by stage although its block indices differ from the teacher's
    grid = create_model("mbv2_cifar_d0.5_w0.5", 10)
    assert auto_mapping(grid, teacher)[-1] == ("body.features.11", "body.features.17")
    assert auto_at_layer(grid, teacher, None) == ("body.features.6", "body.features.9")
    # a student wider than the teacher everywhere: the error lists both models' stages
    with pytest.raises(MappingError, match=r"student body.layer1 32x32.*teacher body.features.1 16x32"):
        auto_mapping(create_model("resnet8_cifar_w2", 10), teacher)
    with pytest.raises(EdgeKDError, match=r"distill.at_layer=.*body.stage2, body.stage3"):
        auto_at_layer(create_model("shufflenetv2_cifar_x0.5", 10), teacher, None)
