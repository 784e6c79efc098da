"""Each distillation term: its value on a hand-computable case, and gradients reach the student."""

import math

import pytest
import torch
from torch import nn

from edgekd.distill.hooks import FeatureTap, LayerPathError
from edgekd.distill.losses import ATLoss, DistillObjective, FitNetLoss, KDLoss, Outputs, PKTLoss
from edgekd.models import create_model


def test_kd_value_and_gradient():
    s = torch.zeros(1, 2, requires_grad=True)
    t = torch.tensor([[math.log(3.0), 0.0]])  # teacher probabilities 0.75 / 0.25 at T = 1
    loss = KDLoss(temperature=1.0)(Outputs(s), Outputs(t), None)
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert s.grad.abs().sum() > 0
    # T^2 scaling: at T = 2 the soft targets are 0.634 / 0.366 and the loss is multiplied by 4
    p = math.sqrt(3) / (math.sqrt(3) + 1)
    kl = p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)
    assert KDLoss(2.0)(Outputs(torch.zeros(1, 2)), Outputs(t), None).item() == pytest.approx(4 * kl, rel=1e-6)


def test_at_value_and_gradient():
    fs = torch.ones(1, 2, 2, 2, requires_grad=True)  # uniform attention: 0.5 at each of 4 pixels
    ft = torch.zeros(1, 3, 2, 2)
    ft[0, :, 0, 0] = 2.0  # all attention on one pixel: [1, 0, 0, 0]
    term = ATLoss("s", "t")
    loss = term(Outputs(None, {"s": fs}), Outputs(None, {"t": ft}), None)
    assert loss.item() == pytest.approx(((0.5 - 1) ** 2 + 3 * 0.5**2) / 4)
    loss.backward()
    assert fs.grad.abs().sum() > 0


def test_pkt_value_and_gradient():
    # Orthogonal student features vs parallel teacher features, batch of 2.
    fs = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    ft = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    term = PKTLoss("s", "t")
    loss = term(Outputs(None, {"s": fs}), Outputs(None, {"t": ft}), None)
    # student rows: sim (cos+1)/2 = [[1, .5], [.5, 1]] -> [2/3, 1/3]; teacher rows: [.5, .5]
    expected = 0.5 * math.log(0.5 / (2 / 3)) + 0.5 * math.log(0.5 / (1 / 3))
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    loss.backward()
    assert fs.grad.abs().sum() > 0
    same = term(Outputs(None, {"s": ft}), Outputs(None, {"t": ft}), None)
    assert same.item() == pytest.approx(0.0, abs=1e-6)


def test_fitnet_value_and_gradient_reach_student_and_regressor():
    term = FitNetLoss("s", "t", s_channels=1, t_channels=2)
    with torch.no_grad():
        term.trainable.weight.copy_(torch.tensor([1.0, 2.0]).view(2, 1, 1, 1))
    fs = torch.full((1, 1, 2, 2), 3.0, requires_grad=True)
    ft = torch.zeros(1, 2, 2, 2)
    loss = term(Outputs(None, {"s": fs}), Outputs(None, {"t": ft}), None)
    assert loss.item() == pytest.approx((9 + 36) / 2)  # regressed maps 3 and 6 vs 0
    loss.backward()
    assert fs.grad.abs().sum() > 0 and term.trainable.weight.grad.abs().sum() > 0


def test_objective_taps_features_by_path_and_trains_only_the_student():
    torch.manual_seed(0)
    teacher = create_model("mbv2_cifar_w0.25", 10).eval()
    student = create_model("mbv2_cifar_trunc13", 10)
    terms = [
        (1.0, KDLoss(4.0)),
        (1.0, ATLoss("body.features.3", "body.features.3")),
        (1.0, PKTLoss("body.classifier:in", "body.classifier:in")),
        (1.0, FitNetLoss("body.features.3", "body.features.3", 24, 8)),
    ]
    obj = DistillObjective(teacher, terms, task_weight=0.5)
    x, y = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    loss, logits = obj(student, x, y, None)
    loss.backward()
    assert logits.shape == (4, 10)
    assert all(p.grad is None for p in teacher.parameters())
    assert student.body.features[0][0].weight.grad.abs().sum() > 0
    assert obj.trainable["fitnet"].weight.grad is not None
    # no hooks are left behind
    assert not any(m._forward_hooks for m in student.modules())


def test_unknown_layer_path_names_nearest():
    model = create_model("mbv2_cifar_trunc13", 10)
    with pytest.raises(LayerPathError, match="nearest: body.features.3"):
        FeatureTap(model, ["body.feature.3"])


def test_tap_records_input_of_classifier():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with FeatureTap(model, ["1:in", "1"]) as tap:
        out = model(torch.ones(1, 2, 2))
    assert tap["1:in"].shape == (1, 4) and torch.equal(tap["1"], out)
