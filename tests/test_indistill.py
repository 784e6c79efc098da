"""InDistill: L1 structured pruning keeps the right filters; the curriculum runs in order."""

import pytest
import torch

from edgekd.config import TrainConfig
from edgekd.data import load_dataset
from edgekd.data.augment import AugmentSettings
from edgekd.distill.indistill import (
    InDistillObjective,
    MappingError,
    auto_mapping,
    build_mapping,
    curriculum,
    kept_channels,
    last_conv,
)
from edgekd.models import create_model
from edgekd.train import engine


def test_pruning_keeps_exactly_the_top_l1_filters():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 6, 3)
    norms = conv.weight.detach().abs().sum(dim=(1, 2, 3))
    expected = torch.sort(torch.topk(norms, 3).indices).values
    assert torch.equal(kept_channels(conv, 3), expected)
    assert torch.equal(kept_channels(conv, 6), torch.arange(6))
    with pytest.raises(MappingError, match="the student is wider"):
        kept_channels(conv, 7)


def test_curriculum_spans():
    assert curriculum(3, a=2, b=1) == [(1, 3), (4, 7), (8, 12)]  # 3, 4, 5 epochs (l from 1)
    assert curriculum(2, a=1, b=0) == [(1, 1), (2, 2)]
    with pytest.raises(MappingError):
        curriculum(2, a=0, b=0)


def test_auto_mapping_and_spatial_check():
    teacher = create_model("mbv2_cifar", 10)
    student = create_model("mbv2_cifar_w0.5", 10)
    pairs = build_mapping(student, teacher, auto_mapping(student, teacher), 32)
    assert [p.student for p in pairs] == ["body.features.3", "body.features.10", "body.features.17"]
    assert [(p.student_channels, p.teacher_channels) for p in pairs] == [(16, 24), (32, 64), (160, 320)]
    with pytest.raises(MappingError, match="spatial sizes"):
        build_mapping(student, teacher, [("body.features.3", "body.features.5")], 32)
    with pytest.raises(MappingError, match="indistill_layers"):
        auto_mapping(create_model("resnet18", 10), teacher)


def test_pruned_teacher_target_is_the_kept_channels_of_the_unpruned_layer():
    teacher = create_model("mbv2_cifar", 10).eval()
    student = create_model("mbv2_cifar_w0.5", 10)
    pairs = build_mapping(student, teacher, auto_mapping(student, teacher), 32)
    obj = InDistillObjective(teacher, pairs)
    conv = last_conv(teacher.body.features[10])
    assert torch.equal(obj.kept[1], kept_channels(conv, 32))
    assert obj.kept[1].numel() == 32


class _Recorder:
    def __init__(self, obj):
        self.obj, self.active = obj, []

    def on_epoch_start(self, stage, epoch, epochs, steps): ...
    def on_step(self, stage, step, loss, acc, ips):
        if step == 1:
            self.active.append(self.obj.active)
    def on_epoch_end(self, stage, record): ...


def test_curriculum_activates_each_layer_for_its_epochs_and_learns(tmp_path):
    data = load_dataset("digits", 16)
    data.train = data.train.subset(range(0, len(data.train), 8))
    teacher = create_model("mbv2_cifar_w0.5", 10, data.mean, data.std).eval()
    student = create_model("mbv2_cifar_w0.25", 10, data.mean, data.std)
    pairs = build_mapping(student, teacher, auto_mapping(student, teacher, max_layers=2), 16)
    obj = InDistillObjective(teacher, pairs, a=0, b=1)  # 1 then 2 epochs
    rec = _Recorder(obj)
    result = engine.train(
        student, data.train, data.val, data.test,
        TrainConfig(epochs=obj.epochs, batch_size=32, lr=3e-3, bn_recalibration=0),
        stage="warmup", seed=0, device=torch.device("cpu"), objective=obj,
        transform=engine.StandardAugment(AugmentSettings(2, False)),
        state_path=tmp_path / "s.pt", metrics_path=tmp_path / "m.jsonl", settings_key="k",
        callback=rec,
    )
    assert rec.active == [0, 1, 1]
    losses = [r["train_loss"] for r in result.history]
    assert losses[2] < losses[1]  # the second layer's MSE falls while it is active


def test_the_teacher_runs_only_as_far_as_the_active_layer():
    from edgekd.distill.hooks import FeatureTap, forward_until

    teacher = create_model("mbv2_cifar_w0.5", 10).eval()
    calls = []
    teacher.body.classifier.register_forward_hook(lambda *a: calls.append(1))
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        out = forward_until(teacher, "body.features.10", x)
        assert calls == []  # nothing after features.10 ran
        with FeatureTap(teacher, ["body.features.10"]) as tap:
            teacher(x)
    assert torch.equal(out, tap["body.features.10"]) and calls == [1]


def test_a_student_at_a_lower_input_size_pairs_by_stride_and_mimics_the_pooled_teacher():
    """A student that downscales 16 px images to 12 inside: its stages pair with the teacher's
    of the same total stride, and each warm-up target is the pruned teacher map average-pooled
    to the student's resolution (without the pooling the MSE would not even broadcast)."""
    import torch.nn.functional as F

    from edgekd.distill.hooks import FeatureTap, forward_until

    torch.manual_seed(0)
    teacher = create_model("mbv2_cifar", 10).eval()
    student = create_model("resnet8_cifar_w0.5", 10, input_size=12)
    pairs = build_mapping(student, teacher, auto_mapping(student, teacher), 16)
    assert [p.size for p in pairs] == [(12, 12), (6, 6), (3, 3)]
    same = build_mapping(create_model("resnet8_cifar_w0.5", 10), teacher,
                         auto_mapping(create_model("resnet8_cifar_w0.5", 10), teacher), 16)
    assert [p.teacher for p in pairs] == [p.teacher for p in same]  # the same stages, by stride
    obj = InDistillObjective(teacher, pairs)
    obj.set_epoch(obj.spans[1][0])  # the second layer: 6x6 against the teacher's 8x8
    x = torch.rand(4, 3, 16, 16)
    loss, _ = obj(student, x, None, None)
    with torch.no_grad(), FeatureTap(student, [pairs[1].student]) as tap:
        student(x)
        target = forward_until(teacher, pairs[1].teacher, x).index_select(1, obj.kept[1])
    assert target.shape[-1] == 8
    expected = F.mse_loss(tap[pairs[1].student], F.adaptive_avg_pool2d(target, 6))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    grads = [p.grad for p in student.body.layer2.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
