"""IG maps and the overlay: real digits, real Captum, the real CLI (and torchrun) on a tiny run."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients
from click.testing import CliRunner

from edgekd.attribution.cache import CacheError, MapCache, StaleCacheError, dataset_identity
from edgekd.attribution.compute import compute_maps
from edgekd.attribution.ig import IGSettings, MapComputer, baselines, plan_batches
from edgekd.attribution.overlay import IGOverlay, overlay
from edgekd.cli import cli
from edgekd.data.augment import AugmentSettings, ResizedCropSettings
from edgekd.pipeline.standalone import ig_compute_run
from edgekd.train import checkpoint, engine
from tests.conftest import TINY

# 314 training images at 16x16 in chunks of 64: five chunks, the last one short.
IG_ARGS = ["--method", "kd+ig", "--ig-steps", "4", "--set", "ig.chunk_size=64", "--no-bench", "--epochs", "1",
           "--set", "export.enabled=false"]


def _cli(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished `edgekd compress --method kd+ig` run, tiny models."""
    out = tmp_path_factory.mktemp("ig") / "run"
    r = _cli("compress", *TINY, *IG_ARGS, "--out", str(out))
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture
def copy(run, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(run, dst)
    return dst


def _run_data(run_dir):
    from edgekd.pipeline.standalone import open_run

    ctx = open_run(run_dir)
    teacher, _ = checkpoint.load_model(run_dir / "teacher.pt")
    return ctx.data, teacher.eval()


def _one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: ")
    for n in needles:
        assert n in result.output, (n, result.output)


# ---- the compress stage ------------------------------------------------------------------
def test_kd_ig_report_records_the_cache(run):
    report = json.loads((run / "report.json").read_text())
    assert report["method"] == "kd+ig"
    ig = report["ig"]
    assert ig["cache"] == "ig" and ig["manifest"] == "ig/manifest.json"
    assert ig["settings"] == {"steps": 4, "method": "gausslegendre", "target": "label", "baseline": "zeros"}
    assert ig["overlay"]["p"] == 0.1 and ig["overlay"]["blend"] == 0.5
    assert {"ig/manifest.json", "ig/maps.npy", "ig/scales.npy"} <= set(report["artifacts"])
    doc = MapCache(run / "ig").verify()
    assert doc["complete"] and doc["shape"] == [314, 16, 16] and len(doc["chunks"]) == 5
    assert MapCache.content_id(doc) == ig["content_id"]
    # The student stage ran with the overlay; the metrics log has no IG epochs.
    stages = [json.loads(x)["stage"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert stages == ["teacher", "student"]


def test_alignment_cache_equals_captum_on_the_same_index(run):
    """Map i is image i's: recomputed directly with Captum, in the teacher's normalised space
    with a zero baseline (the paper's setting), for a few indices."""
    data, teacher = _run_data(run)
    maps = MapCache(run / "ig").load()
    idx = [0, 17, 150, 313]
    x = data.train.images[idx].float() / 255
    z = (x - teacher.mean) / teacher.std
    ig = IntegratedGradients(teacher.body)
    attr = ig.attribute(z, baselines=torch.zeros_like(z), target=data.train.labels[idx], n_steps=4,
                        method="gausslegendre")
    direct = attr.abs().sum(1)
    for k, i in enumerate(idx):
        # Equal up to float16 storage (relative L1 ~1e-4), except where float rounding (raw vs
        # normalised input, other kernels) flips a ReLU6 gate at one of the 4 quadrature points
        # of this 1-epoch teacher: then ~1 %. A wrong pairing differs by O(1).
        assert ((maps[i] - direct[k]).abs().sum() / direct[k].sum()) < 0.03, i
        # ...and no other cached map comes close: a shuffled cache would fail here.
        dist = (maps - direct[k]).abs().flatten(1).sum(1)
        assert int(dist.argmin()) == i


def test_maps_read_from_disk_per_batch_equal_the_loaded_ones(run):
    cache = MapCache(run / "ig")
    rows, full = cache.load(relative=True, lazy=True), cache.load(relative=True)
    assert len(rows) == len(full) and rows.shape == tuple(full.shape)
    idx = torch.tensor([313, 0, 17, 17])
    assert torch.equal(rows[idx], full[idx])


def test_zero_baseline_in_raw_space_is_zero_after_normalisation(run):
    _, teacher = _run_data(run)
    x = torch.rand(2, 3, 16, 16)
    b = baselines(teacher, x, "zeros")
    assert torch.allclose((b - teacher.mean) / teacher.std, torch.zeros_like(b), atol=1e-6)
    blur = baselines(teacher, x, "blur")
    assert blur.shape == x.shape and not torch.allclose(blur, x)
    # Noise is drawn per dataset index: the same for an image in any batch or on any rank.
    n1 = baselines(teacher, x, "noise", torch.tensor([3, 7]), seed=1)
    n2 = baselines(teacher, x[:1], "noise", torch.tensor([7]), seed=1)
    assert torch.equal(n1[1], n2[0]) and not torch.equal(n1[0], n1[1])


def test_maps_do_not_depend_on_rows_per_forward(run):
    data, teacher = _run_data(run)
    images, labels, idx = data.train.images[:6], data.train.labels[:6], torch.arange(6)
    s = IGSettings(steps=10)
    few = MapComputer(teacher, s, torch.device("cpu"), rows=3)(images, labels, idx)
    many = MapComputer(teacher, s, torch.device("cpu"), rows=64)(images, labels, idx)
    rel = ((few - many).abs().sum((1, 2)) / many.sum((1, 2))).sort().values
    # float-identical up to kernel rounding, which can flip a ReLU6 gate at a quadrature point
    # of this tiny teacher for an odd image (then ~1 %); a batching bug changes every map.
    assert rel[len(rel) // 2] < 1e-4 and rel[-1] < 0.03, rel
    assert plan_batches(32, 50) == (1, 25) and plan_batches(32, 8) == (4, 32)
    assert plan_batches(7, 50) == (1, 7)


def test_uint8_cache_matches_float16_within_quantisation(run, tmp_path):
    data, teacher = _run_data(run)
    split = data.train.subset(range(20))
    ident = dataset_identity(data.name, data.classes, split.images, split.labels)
    a = compute_maps(tmp_path / "f16", teacher, split, ident, IGSettings(steps=4), chunk_size=8)
    b = compute_maps(tmp_path / "u8", teacher, split, ident, IGSettings(steps=4), dtype="uint8", chunk_size=8)
    assert a.status == b.status == "computed"
    f16, u8 = MapCache(tmp_path / "f16").load(), MapCache(tmp_path / "u8").load()
    peak = f16.flatten(1).max(1).values[:, None, None]
    assert not torch.equal(u8, f16)  # really quantised...
    assert ((u8 - f16).abs() <= peak / 255 + 1e-3 * peak).all()  # ...to within one level
    rel = MapCache(tmp_path / "u8").load(relative=True)
    assert rel.dtype == torch.float16 and float(rel.max()) == 1.0


# ---- the overlay -------------------------------------------------------------------------
@pytest.mark.parametrize("aug", [AugmentSettings(crop_padding=3, hflip=True),
                                 ResizedCropSettings(hflip=True, scale=(0.2, 0.6))],
                         ids=["crop_pad", "resized_crop"])
def test_overlay_moves_the_map_with_the_pixels(aug):
    """With the map equal to the image, the overlaid output must be a monotone function of
    the augmented image pixel for pixel: true only if crop and flip moved both together."""
    torch.manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 12, 12), dtype=torch.uint8)
    x[:, :, :, :6] //= 4  # left/right asymmetry, so a flip of one and not the other shows
    maps = x[:, 0].float() / 255
    idx = torch.arange(16)
    plain = IGOverlay(maps, aug, p=0.0, blend=1.0)(x, idx, torch.Generator().manual_seed(5))
    only_map = IGOverlay(maps, aug, p=1.0, blend=1.0)(x, idx, torch.Generator().manual_seed(5))
    # p = 0 is exactly the standard augmentation (same generator, same draws first)
    std = engine.StandardAugment(aug)(x, idx, torch.Generator().manual_seed(5))
    assert torch.equal(plain, std)
    for i in range(16):
        v, m = plain[i, 0].flatten(), only_map[i, 0].flatten()
        order = torch.argsort(v)
        assert (m[order].diff() >= -1e-6).all(), i
        assert torch.equal(only_map[i, 0], only_map[i, 1])  # grey map copied to 3 channels
    # The same check fails when the map is not moved with the image.
    shifted = torch.roll(only_map, 1, dims=-1)
    bad = [(shifted[i, 0].flatten()[torch.argsort(plain[i, 0].flatten())].diff() < -1e-3).any()
           for i in range(16)]
    assert any(bad)


def test_overlay_probability_and_power_range():
    g = torch.Generator().manual_seed(1)
    n = 4000
    x = torch.zeros(n, 3, 1, 3)
    maps = torch.tensor([0.0, 0.5, 1.0]).expand(n, 1, 3)
    out = overlay(x, maps, p=0.3, blend=1.0, g=g)
    hit = out.flatten(1).abs().sum(1) > 0
    assert abs(hit.float().mean().item() - 0.3) < 0.03
    mid = out[hit][:, 0, 0, 1]  # 0.5 ** s with s in [1, 2]
    assert mid.min() >= 0.25 - 1e-6 and mid.max() <= 0.5 + 1e-6
    assert mid.min() < 0.27 and mid.max() > 0.48  # the whole range is used
    assert torch.equal(out[~hit], x[~hit])


# ---- resume, stale, corrupt, truncated, out of disk ----------------------------------------
class _StopAfter:
    """A progress hook that interrupts after `n` chunks, like a Ctrl-C."""

    def __init__(self, n=None):
        self.n, self.plans, self.calls = n, [], 0

    def on_plan(self, info):
        self.plans.append(info)

    def on_chunk(self, done, total, ips):
        self.calls += 1
        if self.n is not None and self.calls >= self.n:
            raise KeyboardInterrupt


def test_interrupted_compute_resumes_at_the_first_incomplete_chunk(run, copy):
    ref = json.loads((run / "ig" / "manifest.json").read_text())
    with pytest.raises(KeyboardInterrupt):
        ig_compute_run(copy, force=True, progress=_StopAfter(2))
    doc = json.loads((copy / "ig" / "manifest.json").read_text())
    assert sorted(doc["chunks"]) == ["0", "1"] and doc["complete"] is False
    with pytest.raises(CacheError, match="incomplete"):
        MapCache(copy / "ig").verify()
    _one_line_error(_cli("ig", "show", str(copy)), "incomplete", "edgekd ig compute")

    hook = _StopAfter()
    info = ig_compute_run(copy, progress=hook)
    assert info["status"] == "resumed"
    assert hook.plans[0]["todo_chunks"] == 3 and hook.plans[0]["resumed"]
    assert info["computed_images"] == 314 - 128
    doc = MapCache(copy / "ig").verify()
    assert doc["chunks"] == ref["chunks"]  # the very same bytes as the uninterrupted run


def test_stale_cache_is_refused_with_one_line_naming_force(run, copy):
    before = (copy / "ig" / "manifest.json").read_bytes()
    _one_line_error(_cli("ig", "compute", str(copy), "--ig-steps", "5"),
                    "other settings (steps: 4 -> 5)", "--force")
    _one_line_error(_cli("ig", "compute", str(copy), "--ig-baseline", "blur"),
                    "baseline: 'zeros' -> 'blur'", "--force")
    assert (copy / "ig" / "manifest.json").read_bytes() == before  # untouched

    # Another teacher: same architecture, other weights.
    teacher, meta = checkpoint.load_model(copy / "teacher.pt")
    with torch.no_grad():
        next(teacher.parameters()).add_(0.01)
    checkpoint.save_model(teacher, copy / "teacher.pt", meta["arch"], meta["classes"])
    _one_line_error(_cli("ig", "compute", str(copy)), "of another teacher", "--force")
    _one_line_error(_cli("ig", "show", str(copy)), "of another teacher", "--force")
    r = _cli("ig", "compute", str(copy), "--force", "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["status"] == "computed" and info["computed_images"] == 314
    assert MapCache(copy / "ig").verify()["chunks"] != json.loads(before)["chunks"]


def test_changed_data_set_is_refused(run, copy):
    # The run's training subset grows (a data set that changed since the maps were made)...
    cfg = (copy / "config.yaml").read_text()
    (copy / "config.yaml").write_text(cfg.replace("train_subset: 0.25", "train_subset: 0.3"))
    _one_line_error(_cli("ig", "compute", str(copy)), "of another data set (size 314 -> ", "--force")
    # ...or the same images come in another order: map i would no longer be image i's.
    data, teacher = _run_data(run)
    split = data.train.subset(torch.arange(len(data.train)).flip(0))
    ident = dataset_identity(data.name, data.classes, split.images, split.labels)
    with pytest.raises(StaleCacheError, match="same images in another index order"):
        compute_maps(copy / "ig", teacher, split, ident, IGSettings(steps=4), chunk_size=64)


def test_corrupt_chunk_is_detected_and_only_it_recomputed(run, copy):
    ref = MapCache(run / "ig").verify()
    maps = np.lib.format.open_memmap(copy / "ig" / "maps.npy", mode="r+")
    maps[130, 5, 5] += np.float16(0.25)  # chunk 2 (images 128..191)
    maps.flush()
    del maps
    with pytest.raises(CacheError, match=r"chunk\(s\) 2 fail their checksum"):
        MapCache(copy / "ig").load()
    _one_line_error(_cli("ig", "show", str(copy)), "fail their checksum")
    r = _cli("ig", "compute", str(copy), "--json")
    info = json.loads(r.stdout)
    assert info["status"] == "repaired" and info["computed_images"] == 64
    assert any("failed their checksum" in n for n in info["notes"])
    assert MapCache(copy / "ig").verify()["chunks"] == ref["chunks"]


def test_truncated_maps_are_detected_and_recomputed_by_compress(run, copy):
    f = copy / "ig" / "maps.npy"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CacheError, match="truncated"):
        MapCache(copy / "ig").verify()
    before = (copy / "student.pt").stat().st_mtime_ns
    r = _cli("compress", *TINY, *IG_ARGS, "--out", str(copy), "--resume")
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "is truncated" in text and "recomputing every map" in text
    assert MapCache(copy / "ig").verify()["chunks"] == MapCache(run / "ig").verify()["chunks"]
    # Same maps again, so the student (whose key holds the maps' content id) is still valid.
    assert (copy / "student.pt").stat().st_mtime_ns == before


def test_missing_data_file_is_never_taken_as_complete(copy):
    (copy / "ig" / "scales.npy").unlink()
    with pytest.raises(CacheError, match="scales.npy is missing"):
        MapCache(copy / "ig").verify()
    (copy / "ig" / "manifest.json").write_text('{"format": "edgekd.ig-cache", "vers')
    _one_line_error(_cli("ig", "show", str(copy)), "manifest.json is unreadable")
    info = ig_compute_run(copy)
    assert info["computed_images"] == 314 and any("unreadable" in n for n in info["notes"])


def _limit_file_size():
    # A file-size limit makes the kernel refuse to grow files (EFBIG), as a full disk would
    # (ENOSPC): the cache's preallocation must fail cleanly, not SIGBUS or pass as complete.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (48 * 1024, 48 * 1024))


def test_out_of_disk_leaves_no_cache_that_passes_as_complete(copy):
    proc = subprocess.run([sys.executable, "-m", "edgekd", "ig", "compute", str(copy), "--force"],
                          capture_output=True, text=True, preexec_fn=_limit_file_size, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "cannot write the IG maps" in proc.stderr and "free disk space" in proc.stderr
    assert "Traceback" not in proc.stderr
    with pytest.raises(CacheError):
        MapCache(copy / "ig").verify()
    r = _cli("compress", *TINY, *IG_ARGS, "--out", str(copy), "--resume")
    assert r.exit_code == 0, r.output
    assert MapCache(copy / "ig").verify()["complete"]


# ---- torchrun -----------------------------------------------------------------------------
def test_torchrun_two_ranks_fill_the_same_cache_as_one_process(run, copy, tmp_path):
    # One thread per process on both sides: oneDNN may sum in another order with more threads.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = tmp_path / "single"
    shutil.copytree(run, single)
    # The two computations are independent (own copies, one thread per process): side by side.
    with open(tmp_path / "single.log", "w") as log:
        one = subprocess.Popen([sys.executable, "-m", "edgekd", "ig", "compute", str(single), "--force"],
                               stdout=log, stderr=subprocess.STDOUT, env=env)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "edgekd", "ig", "compute", str(copy), "--force", "--json"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert one.wait(timeout=300) == 0, (tmp_path / "single.log").read_text()
    finally:
        if one.poll() is None:
            one.kill()
            one.wait()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    info = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert info["world_size"] == 2 and info["computed_images"] == 314
    doc = MapCache(copy / "ig").verify()
    assert doc["stats"]["chunks_by_rank"] == [3, 2]  # rounds: (0, 1), (2, 3), (4, -)
    # Every chunk holds the same bytes as the single-process cache.
    assert doc["chunks"] == MapCache(single / "ig").verify()["chunks"]


def test_default_method_is_indistill_kd_ig_end_to_end(tmp_path):
    """No --method: the design card's main job, IG maps then the InDistill warm-up then KD with
    overlays, each a stage of the ledger, in that order in the metrics log."""
    out = tmp_path / "run"
    assert TINY[:2] == ["--method", "kd"]
    tiny = TINY[2:]
    # a tenth of the training images (126): the stages and their order do not depend on it
    r = _cli("compress", *tiny, "--train-subset", "0.1",
             "--teacher-arch", "mbv2_cifar_w0.5", "--student", "mbv2_cifar_w0.25",
             "--ig-steps", "2", "--no-bench", "--epochs", "2",
             "--set", "export.enabled=false", "--set", "distill.indistill_a=1",
             "--set", "distill.indistill_b=0", "--set", "distill.indistill_max_layers=1",
             "--out", str(out))
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "indistill+kd+ig"
    assert report["ig"]["settings"]["steps"] == 2
    ledger = json.loads((out / "state.json").read_text())
    assert {"teacher", "ig", "warmup", "student"} <= set(ledger)
    stages = [json.loads(x)["stage"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert stages[0] == "teacher" and stages[-1] == "student" and "warmup" in stages
    assert stages.index("warmup") < stages.index("student")


# ---- CLI ------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--ig-p", "1.5"], "--ig-p must be in [0, 1], got 1.5"),
    (["--ig-p", "-0.1"], "--ig-p must be in [0, 1]"),
    (["--method", "ig+student"], "'student' (no teacher) cannot combine"),
])
def test_bad_ig_options_are_one_line_and_write_nothing(tmp_path, args, message):
    out = tmp_path / "run"
    _one_line_error(_cli("compress", *TINY, "--out", str(out), *args), message)
    assert not out.exists()


def test_show_writes_a_grid_of_image_map_overlay(run, tmp_path):
    from PIL import Image

    png = tmp_path / "grid.png"
    r = _cli("ig", "show", str(run), "-n", "4", "--out", str(png), "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    data, _ = _run_data(run)
    idx = info["indices"]
    assert [int(data.train.labels[i]) for i in idx] == [0, 1, 2, 3]  # one per class, in turn
    img = np.asarray(Image.open(png).convert("RGB"))
    cell, pad, head, label_w = 64, 4, 18, 96
    assert img.shape == (head + 4 * (cell + pad) + pad, label_w + 3 * (cell + pad) + pad, 3)
    maps = MapCache(run / "ig").load()
    for row, i in enumerate(idx):
        y0, x0 = head + row * (cell + pad), label_w + pad
        tile = img[y0 : y0 + cell : 4, x0 : x0 + cell : 4]  # back to 16x16
        assert np.array_equal(tile, data.train.images[i].permute(1, 2, 0).numpy())
        heat = img[y0 : y0 + cell : 4, x0 + cell + pad : x0 + 2 * cell + pad : 4, 0] / 255
        m = maps[i].numpy()
        red = np.clip(3 * (m - m.min()) / (m.max() - m.min()), 0, 1)
        assert np.abs(heat - red).max() < 0.01  # the map column shows this image's map
