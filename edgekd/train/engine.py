"""One training loop for teachers and students.

Determinism: every epoch draws its sample order, augmentation and dropout from generators
seeded by (seed, epoch), and the learning rate is a function of the step. A checkpoint saved
atomically at the end of each epoch therefore lets a killed run continue bit-for-bit: the
interrupted epoch is simply run again from the same state with the same random numbers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from edgekd import distributed
from edgekd.config import TrainConfig
from edgekd.data.augment import AugmentSettings, augment
from edgekd.data.dataset import Split
from edgekd.data.loader import BatchFeeder
from edgekd.errors import RunDirError
from edgekd.io import append_jsonl, read_jsonl, write_text
from edgekd.train import checkpoint, precision
from edgekd.train.schedule import lr_at


class Objective(Protocol):
    """Computes the training loss; runs the model itself so it may tap features or a teacher.

    Optional extras the engine honours: `trainable` (an nn.Module whose parameters train with
    the model and whose state is checkpointed, e.g. a FitNet regressor) and `set_epoch(epoch)`
    (called at the start of every epoch, e.g. for a curriculum).
    """

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


class BatchTransform(Protocol):
    """uint8 batch (on device) + dataset indices + generator -> float model input in [0, 1].

    A transform may return `(student_input, teacher_input)` instead (the same geometry, e.g.
    an IG overlay for the student only); the engine then passes the second to the objective
    as `teacher_x=`.
    """

    def __call__(self, x: torch.Tensor, idx: torch.Tensor,
                 g: torch.Generator) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]: ...


class CrossEntropy:
    """The task loss alone (a teacher, or a student trained without a teacher)."""

    def __init__(self, label_smoothing: float = 0.0):
        self.label_smoothing = label_smoothing

    def __call__(self, model, x, y, idx):
        logits = model(x)
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing), logits


@dataclass
class StandardAugment:
    """The run's crop (padded, or resized) and (where labels allow) horizontal flip, batched."""

    settings: AugmentSettings

    def __call__(self, x, idx, g):
        return augment(x.float().div_(255.0), self.settings, g)


class Callback(Protocol):
    def on_epoch_start(self, stage: str, epoch: int, epochs: int, steps: int) -> None: ...
    def on_step(self, stage: str, step: int, loss: float, acc: float, ips: float) -> None: ...
    def on_epoch_end(self, stage: str, record: dict) -> None: ...


@dataclass
class TrainResult:
    last: dict  # the final epoch's record
    best: dict  # the record of the epoch with the best validation accuracy
    history: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        return {
            "epochs": self.last["epoch"],
            "last_epoch": {"epoch": self.last["epoch"], "test_acc": self.last["test_acc"],
                           "val_acc": self.last["val_acc"]},
            "best_epoch": {"epoch": self.best["epoch"], "test_acc": self.best["test_acc"],
                           "val_acc": self.best["val_acc"], "selected_on": self.best["selected_on"]},
        }


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RunDirError(f"device {name} requested but CUDA is not available: use --device cpu")
    return dev


def _eval_batch(device: torch.device) -> int:
    # On CPU small batches stay in cache: MobileNetV2 runs 2.4x faster at 64 than at 500.
    return 512 if device.type == "cuda" else 64


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, device: torch.device, batch_size: int | None = None,
             channels_last: bool = False) -> tuple[float, float]:
    """(top-1 accuracy in percent, mean cross-entropy) on a split, model in eval mode."""
    batch_size = batch_size or _eval_batch(device)
    if len(split) == 0:
        return float("nan"), float("nan")
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    for i in range(0, len(split), batch_size):
        x = split.images[i : i + batch_size].to(device).float().div_(255.0)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = split.labels[i : i + batch_size].to(device)
        logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    model.train(was_training)
    return 100.0 * correct / len(split), loss_sum / len(split)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: torch.Tensor, device: torch.device,
                          batch_size: int | None = None, channels_last: bool = False) -> None:
    """Replace BatchNorm running statistics by their exact average over `images` (uint8).

    Early in training the running averages lag far behind the fast-moving weights, and a
    deep net such as MobileNetV2 (52 BN layers) can then score chance in eval mode while
    train-mode accuracy is high. Recomputing them ("precise BN") costs one forward pass over
    a few hundred images and does not change training itself: train mode uses batch stats.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or len(images) == 0:
        return
    batch_size = batch_size or _eval_batch(device)
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches below
    was_training = model.training
    model.train()
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].to(device).float().div_(255.0)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        model(x)
    for bn, m in zip(bns, momenta, strict=True):
        bn.momentum = m
    model.train(was_training)


def bn_sample(images, count: int) -> torch.Tensor:
    """`count` training images drawn across the whole split, in a fixed shuffled order, for
    the BatchNorm statistics. Not the first `count`: an image folder is stored class by class,
    and statistics of one class made a CIFAR-10 teacher score 63 % in eval mode where its
    weights scored 82 %. Shuffled, since the statistics average per-batch variances, which
    batches of one class each would understate (docs/decisions.md)."""
    n = len(images)
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:count]
    return images[idx]


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919) % (2**63)


def batch_layout(n: int, batch_size: int) -> tuple[int, int]:
    """(batch size, steps per epoch) for `n` training images: full batches only, except a
    set smaller than one batch (a 1-sample BatchNorm batch at the end would be noise)."""
    bs = min(batch_size, n)
    return bs, (n // bs if n > bs else 1)


def epoch_batches(seed: int, epoch: int, n: int, batch_size: int) -> tuple[torch.Generator, list]:
    """The epoch's generator (after drawing the order) and its batches of dataset indices.
    The training loop consumes the generator batch by batch through the transform; replaying
    the same calls (edgekd.distill.soft_labels) reproduces every augmented view exactly."""
    bs, steps = batch_layout(n, batch_size)
    gen = torch.Generator().manual_seed(_epoch_seed(seed, epoch))
    order = torch.randperm(n, generator=gen)
    return gen, [order[s * bs : (s + 1) * bs] for s in range(steps)]


def _make_optimizer(modules: list[nn.Module], cfg: TrainConfig,
                    device: torch.device) -> torch.optim.Optimizer:
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    # One fused kernel per step instead of a loop over parameters: 9 % more images per second
    # for ResNet-20 on a 2-core CPU (benchmarks/results/train_throughput.json).
    fused = device.type in ("cpu", "cuda") or None
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, fused=fused,
                               weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)


def train(
    model: nn.Module,
    train_split: Split,
    val_split: Split,
    test_split: Split,
    cfg: TrainConfig,
    *,
    stage: str,
    seed: int,
    device: torch.device,
    objective: Objective,
    transform: BatchTransform,
    state_path: Path,
    metrics_path: Path,
    settings_key: str,
    resume: bool = False,
    tb_dir: Path | None = None,
    callback: Callback | None = None,
    evaluate_every_epoch: bool = True,
) -> TrainResult:
    """Train `model` in place; checkpoint every epoch to `state_path`; log to `metrics_path`.

    Under torchrun the model is wrapped in DistributedDataParallel: every rank draws the same
    global batch (same generator), augments it identically and trains on its strided share;
    gradients are averaged, so one step matches a single-process step on the whole batch
    except for BatchNorm, whose batch statistics are per rank. Rank 0 writes the files.

    `evaluate_every_epoch=False` evaluates after the last epoch only (a warm-up whose
    classifier head does not train has no accuracy worth a pass over val and test).
    """
    model.to(device)
    channels_last = cfg.channels_last
    hooks = []
    if channels_last:
        model.to(memory_format=torch.channels_last)
        if device.type == "cpu":
            hooks = _cpu_channels_last_workaround(model)
    extra = getattr(objective, "trainable", None)
    if extra is not None:
        extra.to(device)
    optimizer = _make_optimizer([model] + ([extra] if extra is not None else []), cfg, device)
    rank, world = distributed.rank(), distributed.world_size()
    main = rank == 0
    net: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # A curriculum loss that reaches only part of the model needs unused-parameter search.
        partial = not getattr(objective, "uses_all_parameters", True)
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                      find_unused_parameters=partial)
    eager = net

    def note(text: str) -> None:
        if main and hasattr(callback, "stage"):
            callback.stage(stage, "note", text)

    compiled_ok = False
    if cfg.compile:
        net = _compile(net, note)
    n = len(train_split)
    bs, steps = batch_layout(n, cfg.batch_size)
    total_steps = steps * cfg.epochs

    state = None
    if resume and state_path.exists():
        state = checkpoint.load(state_path, "training state")
        if state.get("settings_key") != settings_key:
            raise RunDirError(
                f"{state_path} was written with different settings: rerun with --force to start over"
            )
    if state is not None and "precision" in state:  # a resumed run keeps the precision it chose
        amp_dtype = precision.autocast_dtype(device, "bf16") if state["precision"] == "bf16" else None
    else:
        example = torch.rand(bs // world or 1, *train_split.images.shape[1:])
        if channels_last:
            example = example.contiguous(memory_format=torch.channels_last)
        amp_dtype, chosen = precision.choose_autocast(model, example, device, cfg.amp)
        if chosen:
            note(chosen)
    use_scaler = precision.needs_scaler(device, amp_dtype)
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    precision_name = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype]

    start_epoch, history = 1, []
    if state is not None:
        model.load_state_dict(state["model"])
        if extra is not None:
            extra.load_state_dict(state["objective"])
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch = state["epoch"] + 1
        history = list(state["history"])
    if main:
        _truncate_metrics(metrics_path, stage, start_epoch - 1)

    writer = None
    if tb_dir is not None and main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(tb_dir / stage), purge_step=start_epoch)

    feeder = BatchFeeder(train_split.images, device)
    labels_dev = train_split.labels.to(device)
    try:
        for epoch in range(start_epoch, cfg.epochs + 1):
            gen, batches = epoch_batches(seed, epoch, n, bs)
            torch.manual_seed(_epoch_seed(seed, epoch))  # dropout and the like: the global RNG
            model.train()
            if callback:
                callback.on_epoch_start(stage, epoch, cfg.epochs, steps)
            if hasattr(objective, "set_epoch"):
                objective.set_epoch(epoch)
            t0 = time.perf_counter()
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            seen = seen_here = 0
            last_report = t0
            for s, images in enumerate(feeder.epoch(batches)):
                idx = batches[s]
                idx_dev = idx.to(device)
                x = transform(images, idx, gen)
                x, x_t = x if isinstance(x, tuple) else (x, None)
                y = labels_dev[idx_dev]
                if world > 1:  # this rank's share of the identically augmented global batch
                    x, y, idx_dev = x[rank::world], y[rank::world], idx_dev[rank::world]
                    x_t = x_t[rank::world] if x_t is not None else None
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                    if x_t is not None:
                        x_t = x_t.contiguous(memory_format=torch.channels_last)
                lr = lr_at(cfg.schedule, cfg.lr, (epoch - 1) * steps + s, total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.zero_grad(set_to_none=True)
                try:
                    loss, logits = _forward_backward(objective, net, x, y, idx_dev, x_t, device,
                                                     amp_dtype, scaler)
                except Exception as e:  # noqa: BLE001 - compilation fails as any exception
                    if net is eager or compiled_ok:
                        raise
                    note(f"torch.compile failed on this model ({type(e).__name__}): training eagerly")
                    net = eager
                    optimizer.zero_grad(set_to_none=True)
                    loss, logits = _forward_backward(objective, net, x, y, idx_dev, x_t, device,
                                                     amp_dtype, scaler)
                compiled_ok = True
                if world > 1 and extra is not None:  # not inside DDP: average by hand
                    for p in extra.parameters():
                        if p.grad is not None:
                            distributed.all_reduce_sum(p.grad).div_(world)
                scaler.step(optimizer)
                scaler.update()
                loss_sum += loss.detach() * len(y)
                correct += (logits.detach().argmax(1) == y).sum()
                seen += len(idx)  # the global batch: all ranks together
                seen_here += len(y)
                # Progress at most 4 times a second: .item() waits for the device, and a
                # wait per step would stall a GPU's queue.
                now = time.perf_counter()
                if callback and main and (s == 0 or now - last_report >= 0.25 or s + 1 == steps):
                    last_report = now
                    callback.on_step(stage, s + 1, loss_sum.item() / seen_here,
                                     100.0 * correct.item() / seen_here, seen / max(now - t0, 1e-9))
            train_time = time.perf_counter() - t0
            if world > 1:  # every rank logs the global figures
                totals = distributed.all_reduce_sum(torch.stack([loss_sum.float(), correct.float()]))
                loss_sum, correct = totals[0], totals[1].long()
            val_acc = val_loss = test_acc = test_loss = None
            if evaluate_every_epoch or epoch == cfg.epochs:
                if cfg.bn_recalibration > 0:
                    recalibrate_batchnorm(model, bn_sample(train_split.images, cfg.bn_recalibration), device,
                                          channels_last=channels_last)
                val_acc, val_loss = evaluate(model, val_split, device, channels_last=channels_last)
                test_acc, test_loss = evaluate(model, test_split, device, channels_last=channels_last)
            record = {
                "stage": stage, "epoch": epoch, "lr": lr,
                "train_loss": loss_sum.item() / seen, "train_acc": 100.0 * correct.item() / seen,
                "val_acc": val_acc, "val_loss": val_loss,
                "test_acc": test_acc, "test_loss": test_loss,
                "images_per_s": seen / train_time, "epoch_time_s": time.perf_counter() - t0,
                "precision": precision_name,
            }
            history.append(record)
            if not main:
                distributed.barrier()  # rank 0 is writing the checkpoint
                continue
            checkpoint.save(
                {
                    "epoch": epoch,
                    "settings_key": settings_key,
                    "model": model.state_dict(),
                    "objective": extra.state_dict() if extra is not None else None,
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict() if use_scaler else None,
                    "precision": precision_name,
                    "history": history,
                },
                state_path,
            )
            # The metrics line follows the checkpoint: a crash between the two is healed on
            # resume, which rewrites the log to match the checkpoint.
            append_jsonl(metrics_path, record)
            if writer is not None:
                for k in ("train_loss", "train_acc", "val_acc", "test_acc", "lr", "images_per_s"):
                    if record[k] is not None:
                        writer.add_scalar(f"{stage}/{k}", record[k], epoch)
                writer.flush()
            if callback:
                callback.on_epoch_end(stage, record)
            distributed.barrier()
    finally:
        if writer is not None:
            writer.close()
        for h in hooks:
            h.remove()
        feeder.close()
    model.to(memory_format=torch.contiguous_format)
    return _result(history, has_val=len(val_split) > 0)


def _forward_backward(objective, net, x, y, idx, x_t, device, amp_dtype, scaler):
    with precision.autocast(device, amp_dtype):
        if x_t is None:
            loss, logits = objective(net, x, y, idx)
        else:
            loss, logits = objective(net, x, y, idx, teacher_x=x_t)
    scaler.scale(loss).backward()
    return loss, logits


def _compile(net: nn.Module, note) -> nn.Module:
    """torch.compile (inductor) of the training forward; the eager model where it is missing.
    Compilation happens at the first step; a failure there falls back too (train())."""
    try:
        return torch.compile(net)
    except Exception as e:  # noqa: BLE001 - e.g. no compiler toolchain, an unsupported platform
        note(f"torch.compile is unavailable here ({type(e).__name__}: {e}): training eagerly")
        return net


def _cpu_channels_last_workaround(model: nn.Module) -> list:
    """Keep strided 1x1 convolutions of <= 8 input channels in the contiguous format: on CPU
    their channels-last weight gradient crashes the process (segfault or heap corruption;
    torch 2.14.1, oneDNN 3.12, AVX-512, inputs of 64 px and more, e.g. the downsampling of
    resnet8_cifar_w0.5 at 64x64). Returns the hooks to remove after training."""
    hooks = []
    for m in model.modules():
        if (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and max(m.stride) > 1
                and m.in_channels <= 8):
            m.to(memory_format=torch.contiguous_format)
            hooks.append(m.register_forward_pre_hook(lambda _m, args: (args[0].contiguous(), *args[1:])))
    return hooks


def _result(history: list[dict], has_val: bool) -> TrainResult:
    key = "val_acc" if has_val else "test_acc"
    # Ties go to the later epoch: it has seen more training. Epochs left unevaluated (None)
    # cannot be chosen; the last epoch always is evaluated.
    best = max((r for r in reversed(history) if r[key] is not None), key=lambda r: r[key])
    best = {**best, "selected_on": "val" if has_val else "test (no val split: optimistic)"}
    return TrainResult(last=history[-1], best=best, history=history)


def _truncate_metrics(path: Path, stage: str, last_epoch: int) -> None:
    """Drop this stage's log lines past `last_epoch` (left by a run killed mid-way)."""
    records = read_jsonl(path)
    kept = [r for r in records if r.get("stage") != stage or r.get("epoch", 0) <= last_epoch]
    if path.exists() and (len(kept) != len(records) or path.read_text().count("\n") != len(records)):
        write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


TrainFn = Callable[..., TrainResult]
