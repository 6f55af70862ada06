"""Training: presets, schedule, EMA, a real run's outputs, exact resume after SIGKILL, NaN stop,
torchrun with two CPU processes."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from run_files import read_metrics, without_timing
from safetensors.torch import load_file

from mobilenets import create_model, save_weights
from mobilenets.core.errors import MobileNetsError
from mobilenets.data.classification import load_splits
from mobilenets.data.device_data import DeviceImages
from mobilenets.engine import loop, run
from mobilenets.engine.checkpoint import STATE_FILE, load_checkpoint, save_state
from mobilenets.engine.device import unwrap
from mobilenets.engine.loop import TrainingDiverged
from mobilenets.tasks.classification.train import (
    TrainConfig,
    fit,
    train_config,
    uses_device_data,
)

# A tiny, learnable run: 0.35-wide small-input V2 on 32x32 synthetic images.
TINY = dict(
    model="mobilenet_v2",
    data="synthetic:160",
    alpha=0.35,
    epochs=2,
    batch_size=16,
    lr=0.05,
    warmup_epochs=0.0,
    augment="basic",
    random_erasing=0.0,
    workers=0,
)


def tiny_config(**changes) -> TrainConfig:
    return train_config("modern", **{**TINY, **changes})


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = fit(tiny_config(epochs=3), out, progress=False)
    return out, result


# --- Configuration ------------------------------------------------------------------------------


def test_presets_hold_the_papers_settings_and_flags_override_them():
    paper = train_config("paper")
    assert (paper.optimizer, paper.lr, paper.weight_decay) == ("rmsprop", 0.045, 4e-5)
    assert (paper.rmsprop_decay, paper.momentum, paper.lr_decay) == (0.9, 0.9, 0.98)
    assert (paper.label_smoothing, paper.ema_decay, paper.schedule) == (0.1, 0.9999, "exponential")
    modern = train_config("modern", lr=0.3, epochs=None)
    assert (modern.optimizer, modern.nesterov, modern.schedule) == ("sgd", True, "cosine")
    assert modern.augment == "trivial" and modern.random_erasing > 0 and modern.ema_decay > 0
    assert modern.lr == 0.3 and modern.epochs == TrainConfig().epochs


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(preset="fast"), "preset must be one of paper, modern"),
        (dict(optimizer="adam"), "optimizer must be one of sgd, rmsprop, adamw"),
        (dict(lr=0), "lr must be positive"),
        (dict(label_smoothing=1.0), "label_smoothing must be in [0, 1)"),
        (dict(amp="int8"), "amp must be one of"),
        (dict(lr_rate=0.1), "unknown training settings ['lr_rate']"),
        (dict(device_data="gpu"), "device_data must be one of auto, on, off, got 'gpu'"),
    ],
)
def test_bad_settings_are_refused_with_what_is_allowed(changes, message):
    with pytest.raises(MobileNetsError) as error:
        train_config(**changes)
    assert message in str(error.value)


# --- A run and what it leaves -------------------------------------------------------------------


def test_a_run_learns_and_leaves_config_metrics_checkpoints_and_plots(finished_run):
    out, result = finished_run
    rows = read_metrics(out)
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    # 10 classes: chance is 0.1. (Validation accuracy lags in so short a run: BN's running
    # statistics trail the weights for the first steps, in torchvision's V2 as in ours.)
    assert rows[-1]["train_top1"] >= 0.3
    assert result.final.top1 == pytest.approx(rows[-1]["val_top1"])
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["train_config"]["alpha"] == 0.35 and saved["train_config"]["preset"] == "modern"
    assert saved["model_config"]["small_input"] is True  # 32 px images get the small variant
    assert saved["model_config"]["num_classes"] == 10 and len(saved["classes"]) == 10
    for name in ("curves.png", "confusion.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    evaluation = json.loads((out / "eval.json").read_text())
    assert evaluation["top1"] == pytest.approx(result.final.top1)
    assert sum(map(sum, evaluation["confusion"])) == evaluation["count"] == 40  # 160 / 4


def test_checkpoint_rebuilds_the_model_from_the_file_alone(finished_run):
    out, result = finished_run
    checkpoint = load_checkpoint(out / "last.safetensors")
    assert checkpoint.model.config.alpha == 0.35 and checkpoint.model.config.small_input
    assert checkpoint.classes == tuple(f"class_{i}" for i in range(10))
    assert checkpoint.preprocessing.resolution == 32 and checkpoint.train_config["epochs"] == 3
    state = torch.load(out / STATE_FILE, weights_only=True)
    assert state["epoch"] == 3 and state["step"] == 3 * (160 // 16)
    assert load_checkpoint(out).path.name == "best.safetensors"


def test_an_existing_run_is_not_overwritten_without_resume(finished_run):
    out, _ = finished_run
    with pytest.raises(MobileNetsError, match="already holds a run; pass resume=True"):
        fit(tiny_config(), out, progress=False)


def test_resume_of_a_missing_run_is_refused(tmp_path):
    with pytest.raises(MobileNetsError, match="no training state"):
        fit(tiny_config(), tmp_path / "none", resume=True, progress=False)


KILLER = textwrap.dedent(
    """
    import json, os, signal, sys
    from mobilenets.engine import run
    from mobilenets.tasks.classification.train import fit, train_config

    out, kill_at, resume = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "resume"
    original = run.train_epoch

    def train_epoch(model, loader, trainer, state, on_step=None, **kwargs):
        def hook(epoch_state):
            on_step(epoch_state)
            if trainer.step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        return original(model, loader, trainer, state, on_step=hook, **kwargs)

    run.train_epoch = train_epoch
    config = train_config("modern", **json.loads(os.environ["CONFIG"]))
    fit(config, out, resume=resume, progress=False)
    """
)


def run_killable(out: Path, kill_at: int, resume: bool, config: dict) -> int:
    env = {**os.environ, "CONFIG": json.dumps(config)}
    command = [sys.executable, "-c", KILLER, str(out), str(kill_at), "resume" if resume else "-"]
    return subprocess.run(command, env=env, capture_output=True, text=True).returncode


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_finishes_exactly_as_an_uninterrupted_run(tmp_path):
    # Dropout and random erasing draw randomness inside the epoch: the resumed run must
    # replay both exactly.
    config = {**TINY, "epochs": 2, "state_every": 2, "dropout": 0.5, "random_erasing": 0.5}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert run_killable(straight, 0, False, config) == 0
    # 10 steps per epoch; saves after steps 2, 4, 6, 8 (mid-epoch), 10 (end of epoch 1), 12.
    # The kill lands at step 13, mid-epoch 2, after the save at step 12.
    assert run_killable(killed, 13, False, config) == -signal.SIGKILL
    state = torch.load(killed / STATE_FILE, weights_only=True)
    assert (state["epoch"], state["epoch_state"]["batch"], state["step"]) == (1, 2, 12)
    assert len(read_metrics(killed)) == 1
    assert run_killable(killed, 0, True, config) == 0
    assert without_timing(read_metrics(killed)) == without_timing(read_metrics(straight))
    for name in ("last.safetensors", "best.safetensors"):
        ours, theirs = load_file(killed / name), load_file(straight / name)
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[key], theirs[key]) for key in ours)


def test_resume_may_move_a_run_to_other_workers_and_finishes_exactly(tmp_path, monkeypatch, caplog):
    # As when a run started on one machine carries on on another: the same run, resumed with
    # other loader workers and save interval, ends with the uninterrupted run's weights.
    config = tiny_config(epochs=2, dropout=0.5, random_erasing=0.5)
    straight, moved = tmp_path / "straight", tmp_path / "moved"
    fit(config, straight, progress=False)
    original = run.train_epoch

    def stopped(model, loader, trainer, state, on_step=None, **kwargs):
        def hook(epoch_state):
            on_step(epoch_state)
            if trainer.step == 13:  # mid-epoch 2; the last save was the end of epoch 1
                raise KeyboardInterrupt

        return original(model, loader, trainer, state, on_step=hook, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(run, "train_epoch", stopped)
        with pytest.raises(KeyboardInterrupt):
            fit(config, moved, progress=False)
    assert torch.load(moved / STATE_FILE, weights_only=True)["step"] == 10
    placement = {"workers": 2, "state_every": 3}
    with caplog.at_level(logging.INFO, logger="mobilenets"):
        fit(None, moved, resume=True, placement=placement, progress=False)
    lines = [record.getMessage() for record in caplog.records]
    assert "resuming" in lines[0] and lines[0].endswith(
        ", with workers 2 (saved 0), state_every 3 (saved 0)"
    )
    saved = json.loads((moved / "train_config.json").read_text())["train_config"]
    assert (saved["workers"], saved["state_every"]) == (2, 3)
    assert without_timing(read_metrics(moved)) == without_timing(read_metrics(straight))
    ours, theirs = load_file(moved / "last.safetensors"), load_file(straight / "last.safetensors")
    assert all(torch.equal(ours[key], theirs[key]) for key in theirs)


def test_resume_may_change_only_where_the_run_executes(finished_run):
    out, _ = finished_run
    with pytest.raises(MobileNetsError, match="may change only device, workers, .*; not epochs"):
        fit(None, out, resume=True, placement={"epochs": 5}, progress=False)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    original = run.train_epoch

    def poisoned(model, loader, trainer, state, **kwargs):
        if trainer.step >= 10:  # the second epoch: its first forward returns NaN
            handle = unwrap(model).classifier.register_forward_hook(
                lambda module, inputs, output: output * math.nan
            )
        else:
            handle = None
        try:
            return original(model, loader, trainer, state, **kwargs)
        finally:
            if handle is not None:
                handle.remove()

    monkeypatch.setattr(run, "train_epoch", poisoned)
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 10.*last good"):
        fit(tiny_config(epochs=3), tmp_path, progress=False)
    assert len(read_metrics(tmp_path)) == 1
    state = torch.load(tmp_path / STATE_FILE, weights_only=True)
    assert state["step"] == 10 and all(v.isfinite().all() for v in state["model"].values())
    weights = load_file(tmp_path / "last.safetensors")
    assert all(v.isfinite().all() for v in weights.values() if v.is_floating_point())


@pytest.mark.parametrize("terminal", [False, True])
def test_progress_is_a_bar_on_a_terminal_and_plain_lines_in_a_log(
    tmp_path, capsys, monkeypatch, caplog, terminal
):
    monkeypatch.setattr(loop, "PROGRESS_LINE_SECONDS", 0.0)  # a line after every step
    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    with caplog.at_level(logging.INFO, logger="mobilenets.progress"):
        fit(tiny_config(epochs=1), tmp_path)
    err = capsys.readouterr().err
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch 1/1: ")]
    if terminal:  # tqdm's bar, redrawn in place, and no plain lines
        assert "\r" in err and not [line for line in lines if " batch [" in line]
    else:  # one line per step (10 batches of 16), with position, ETA, rate and the postfix
        assert "\r" not in err
        assert [line.split(" batch [")[0] for line in lines] == [
            f"epoch 1/1: {n}/10" for n in range(1, 11)
        ]
        assert all(
            re.search(r"<\d\d:\d\d, .*loss=\d\.\d{4}, lr=.*, img_s=", line) for line in lines
        )


def test_resume_refuses_data_with_another_number_of_classes(finished_run, tmp_path):
    out, _ = finished_run
    copy = tmp_path / "copy"
    state = torch.load(out / STATE_FILE, weights_only=True)
    state["run"]["model_config"]["num_classes"] = 7
    save_state(copy / STATE_FILE, state)
    with pytest.raises(MobileNetsError, match="saved run has .* with 7 classes"):
        fit(None, copy, resume=True, progress=False)


@pytest.mark.slow
def test_torchrun_trains_on_two_cpu_processes_with_gloo(tmp_path):
    out = tmp_path / "ddp"
    # Started from weights, which the main process reads first and the other after it.
    weights = save_weights(create_model("mobilenet_v2", alpha=0.35), tmp_path / "w.safetensors")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        "--standalone",
        "-m",
        "mobilenets",
        "train",
        "--data",
        "synthetic:128",
        "--model",
        "mobilenet_v2",
        "--alpha",
        "0.35",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--lr",
        "0.05",
        "--augment",
        "basic",
        "--random-erasing",
        "0",
        "--no-progress",
        "--weights",
        str(weights),
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    run = json.loads((out / "train_config.json").read_text())
    assert run["world_size"] == 2
    rows = read_metrics(out)
    assert len(rows) == 1  # only rank 0 writes
    assert rows[0]["step"] == 128 // (16 * 2)  # each process trains on its half
    evaluation = json.loads((out / "eval.json").read_text())
    assert evaluation["count"] == 32  # the two halves of the validation set, all-reduced
    assert finished.stdout.count("checkpoint:") == 1
    assert finished.stdout.count("starting from the weights") == 1


def test_resume_with_other_settings_is_refused_and_none_takes_the_saved_ones(finished_run):
    out, _ = finished_run
    with pytest.raises(MobileNetsError, match=r"other settings: epochs=5 \(saved 3\)"):
        fit(tiny_config(epochs=5), out, resume=True, progress=False)
    with pytest.raises(MobileNetsError, match="needs a TrainConfig"):
        fit(None, out / "elsewhere", progress=False)


# --- Augmentation on the device -----------------------------------------------------------------


def test_device_data_is_on_for_in_memory_data_on_cuda(tmp_path):
    synthetic = load_splits("synthetic:20", 32)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # only their kind is read
    assert uses_device_data(tiny_config(), synthetic, cuda)
    assert not uses_device_data(tiny_config(), synthetic, cpu)
    assert uses_device_data(tiny_config(device_data="on"), synthetic, cpu)
    assert not uses_device_data(tiny_config(device_data="off"), synthetic, cuda)
    trivial = tiny_config(augment="trivial", random_erasing=0.25)
    assert uses_device_data(trivial, synthetic, cuda)  # in memory: every augmentation


def jpeg_folder(root: Path, side: int = 80) -> Path:
    from PIL import Image

    for split in ("train", "val"):
        for name, colour in (("a", (200, 30, 30)), ("b", (30, 30, 200))):
            (root / split / name).mkdir(parents=True)
            for index in range(8):
                Image.new("RGB", (side + 8 * index, side), colour).save(
                    root / split / name / f"{index}.jpg", quality=90
                )
    return root


def test_image_folders_go_to_the_device_with_the_crop_and_flip_only(tmp_path):
    folder = load_splits(str(jpeg_folder(tmp_path / "jpegs")), 64)
    cuda = torch.device("cuda")
    basic = dict(augment="basic", random_erasing=0.0)
    assert uses_device_data(tiny_config(**basic), folder, cuda)
    assert not uses_device_data(tiny_config(**basic), folder, torch.device("cpu"))
    # auto keeps TrivialAugment and random erasing on the CPU path, which has them
    assert not uses_device_data(tiny_config(augment="trivial", random_erasing=0.0), folder, cuda)
    assert not uses_device_data(tiny_config(augment="basic", random_erasing=0.25), folder, cuda)
    with pytest.raises(MobileNetsError, match=r"not augment='trivial' and random_erasing=0.25"):
        uses_device_data(
            tiny_config(device_data="on", augment="trivial", random_erasing=0.25), folder, cuda
        )


def test_a_jpeg_folder_trains_on_the_device_without_the_data_loader(tmp_path, monkeypatch):
    def no_loader(*args, **kwargs):
        raise AssertionError("device_data='on' trains without a DataLoader")

    monkeypatch.setattr(run, "make_loader", no_loader)  # evaluation keeps its own loader
    config = tiny_config(
        data=str(jpeg_folder(tmp_path / "jpegs")),
        resolution=64,
        epochs=1,
        batch_size=4,
        device_data="on",
    )
    fit(config, tmp_path / "run", progress=False)
    rows = read_metrics(tmp_path / "run")
    assert len(rows) == 1 and rows[0]["step"] == 16 // 4 and math.isfinite(rows[0]["train_loss"])
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert saved["device_data"] is True


def test_a_run_with_device_data_trains_without_the_data_loader(tmp_path, monkeypatch):
    def no_loader(*args, **kwargs):
        raise AssertionError("device_data='on' trains without a DataLoader")

    monkeypatch.setattr(run, "make_loader", no_loader)  # evaluation keeps its own loader
    config = tiny_config(
        data="synthetic:256", epochs=1, device_data="on", augment="trivial", random_erasing=0.25
    )
    result = fit(config, tmp_path, progress=False)
    rows = read_metrics(tmp_path)
    assert len(rows) == 1 and rows[0]["step"] == 256 // 16 and math.isfinite(rows[0]["train_loss"])
    assert result.final.count == 64
    saved = json.loads((tmp_path / "train_config.json").read_text())
    assert saved["train_config"]["device_data"] == "on"


def test_an_interrupted_run_with_device_data_resumes_exactly(tmp_path, monkeypatch):
    config = tiny_config(
        epochs=2,
        dropout=0.5,
        random_erasing=0.5,
        augment="trivial",
        device_data="on",
        state_every=4,
    )
    straight, stopped_run = tmp_path / "straight", tmp_path / "stopped"
    fit(config, straight, progress=False)
    original = run.train_epoch

    def stopped(model, loader, trainer, state, on_step=None, **kwargs):
        assert isinstance(loader.dataset, DeviceImages)

        def hook(epoch_state):
            on_step(epoch_state)
            if trainer.step == 13:  # mid-epoch 2, after the save at step 12
                raise KeyboardInterrupt

        return original(model, loader, trainer, state, on_step=hook, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(run, "train_epoch", stopped)
        with pytest.raises(KeyboardInterrupt):
            fit(config, stopped_run, progress=False)
    state = torch.load(stopped_run / STATE_FILE, weights_only=True)
    assert (state["epoch"], state["epoch_state"]["batch"], state["step"]) == (1, 2, 12)
    # Resumed on another device kind, "auto" would pick the DataLoader; the run keeps its path.
    saved = json.loads((stopped_run / "train_config.json").read_text())
    assert saved["device_data"] is True
    fit(None, stopped_run, resume=True, progress=False)
    assert without_timing(read_metrics(stopped_run)) == without_timing(read_metrics(straight))
    for name in ("last.safetensors", "best.safetensors"):
        ours, theirs = load_file(stopped_run / name), load_file(straight / name)
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[key], theirs[key]) for key in ours)
