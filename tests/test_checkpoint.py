import pytest
import torch

from edgekd.errors import ModelError
from edgekd.models import create_model
from edgekd.train import checkpoint


def _saved(tmp_path, arch="mbv2_cifar_trunc15", classes=10):
    model = create_model(arch, classes, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
    path = tmp_path / "m.pt"
    checkpoint.save_model(model, path, arch, [str(i) for i in range(classes)])
    return model, path


def test_round_trip_keeps_weights_and_normalisation(tmp_path):
    model, path = _saved(tmp_path)
    loaded, meta = checkpoint.load_model(path, "mbv2_cifar_trunc15", 10)
    assert meta["arch"] == "mbv2_cifar_trunc15"
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert loaded.mean.flatten().tolist() == pytest.approx([0.1, 0.2, 0.3])


def test_other_architecture_or_class_count_is_refused(tmp_path):
    _, path = _saved(tmp_path)
    with pytest.raises(ModelError, match="holds a mbv2_cifar_trunc15, not a mbv2_cifar"):
        checkpoint.load_model(path, "mbv2_cifar", 10)
    with pytest.raises(ModelError, match="has 10 classes but the data set has 3"):
        checkpoint.load_model(path, "mbv2_cifar_trunc15", 3)


def test_bare_state_dict_of_wrong_shape_is_refused(tmp_path):
    body = create_model("mbv2_cifar_trunc15", 10).body
    torch.save(body.state_dict(), tmp_path / "bare.pt")
    norm = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    model, _ = checkpoint.load_model(tmp_path / "bare.pt", "mbv2_cifar_trunc15", 10, norm=norm)
    assert isinstance(model.body, type(body)) and model.std.flatten().tolist() == [0.25] * 3
    with pytest.raises(ModelError, match="does not fit mbv2_cifar_trunc13.*it is a mbv2_cifar_trunc15"):
        checkpoint.load_model(tmp_path / "bare.pt", "mbv2_cifar_trunc13", 10, norm=norm)
    with pytest.raises(ModelError, match="does not say how its inputs were normalised: pass --teacher-norm"):
        checkpoint.load_model(tmp_path / "bare.pt", "mbv2_cifar_trunc15", 10)


def test_truncated_and_garbage_files_are_refused(tmp_path):
    _, path = _saved(tmp_path)
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="unreadable"):
        checkpoint.load_model(tmp_path / "cut.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ModelError, match="unreadable"):
        checkpoint.load_model(tmp_path / "junk.pt")
    with pytest.raises(ModelError, match="not found"):
        checkpoint.load_model(tmp_path / "missing.pt")


def test_code_in_a_checkpoint_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (exec, (f"import pathlib; pathlib.Path({str(marker)!r}).touch()",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    # Named for what it is (not "truncated or corrupt"), in one whole line.
    with pytest.raises(ModelError) as e:
        checkpoint.load(tmp_path / "evil.pt", "teacher checkpoint")
    assert str(e.value).endswith("was refused: it holds a pickled exec object, and loading "
                                 "it could run code; save only tensors (torch.save(model.state_dict(), ...))")
    assert "\n" not in str(e.value)
    assert not marker.exists()
