"""Training precision per device: bf16 only where the CPU has it natively, `auto` measured on a
copy of the model without touching the run's weights or random numbers."""

import pytest
import torch

from edgekd.config import build_config
from edgekd.errors import EdgeKDError
from edgekd.models import create_model
from edgekd.train import precision

CPU = torch.device("cpu")


@pytest.fixture
def no_bf16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "fma"}))


@pytest.fixture
def native_bf16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))


def test_bf16_on_a_cpu_without_it_is_refused_in_one_line(no_bf16):
    with pytest.raises(EdgeKDError, match=r"no native bf16 .*use amp=auto or off$"):
        precision.autocast_dtype(CPU, "bf16")
    assert precision.autocast_dtype(CPU, "auto") is None  # auto quietly stays FP32
    assert precision.choose_autocast(torch.nn.Linear(2, 2), torch.rand(4, 2), CPU, "auto") == (None, None)


def test_native_bf16_is_offered_and_off_means_off(native_bf16):
    assert precision.autocast_dtype(CPU, "bf16") is torch.bfloat16
    assert precision.autocast_dtype(CPU, "auto") is torch.bfloat16
    assert precision.autocast_dtype(CPU, "off") is None


def test_auto_measures_on_a_copy_and_leaves_weights_and_random_numbers_alone(native_bf16):
    model = create_model("resnet8_cifar_w0.5", 10).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(8, 3, 16, 16)
    torch.manual_seed(7)
    rng = torch.random.get_rng_state()
    dtype, note = precision.choose_autocast(model, x, CPU, "auto", steps=1)
    assert dtype in (None, torch.bfloat16)
    assert note.startswith("bf16 autocast (measured" if dtype else "FP32 (bf16 autocast measured")
    assert torch.equal(torch.random.get_rng_state(), rng)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # asked again for the same model and batch shape: the first answer, not a new measurement
    assert precision.choose_autocast(model, x, CPU, "auto") == (dtype, note)


def test_older_boolean_configs_still_read():
    cfg = build_config(sets=["student.train.amp=true", "teacher.train.amp=false"])
    assert (cfg.student.train.amp, cfg.teacher.train.amp) == ("auto", "off")
