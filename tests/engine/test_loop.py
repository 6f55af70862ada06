"""The training step: no host synchronisation per step, the device-side skip of a non-finite
loss, fused optimizers, the compiled step, and a training split that makes its own batches."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from mobilenets.core.models import build_model
from mobilenets.core.preprocessing import Preprocessing
from mobilenets.core.spec import ModelConfig
from mobilenets.engine import loop, run
from mobilenets.engine.checkpoint import LAST, STATE_FILE
from mobilenets.engine.device import Distributed
from mobilenets.engine.loop import EpochState, TrainingDiverged, make_trainer, train_epoch
from mobilenets.engine.optim import make_optimizer
from mobilenets.engine.run import Job
from mobilenets.engine.settings import TrainSettings

CPU = torch.device("cpu")
CONFIG = TrainSettings(
    epochs=1,
    batch_size=8,
    lr=0.05,
    warmup_epochs=0.0,
    ema_decay=0.9,
    amp="off",
    channels_last=False,
    device="cpu",
)


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    config = ModelConfig(
        "mobilenet_v2",
        alpha=0.35,
        resolution=28,
        num_classes=4,
        in_chans=1,
        dropout=0.0,
        small_input=True,
    )
    return build_model(config)


def make_batches(count: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(8, 1, 28, 28, generator=generator),
            torch.randint(0, 4, (8,), generator=generator),
        )
        for _ in range(count)
    ]


def cross_entropy(model, batch, trainer):
    images, labels = batch
    logits = model(images.to(trainer.device))
    loss = F.cross_entropy(logits, labels.to(trainer.device))
    return loss, len(labels), {"correct": (logits.argmax(1) == labels).sum()}


def nan_from(step: int):
    """A loss function whose loss is NaN from ``step`` on (its gradients too)."""

    def loss_fn(model, batch, trainer):
        loss, count, sums = cross_entropy(model, batch, trainer)
        return (loss * math.nan if trainer.step >= step else loss), count, sums

    return loss_fn


def trained_state(model, trainer) -> dict:
    """Copies of what a step changes: the weights, the optimizer state and the EMA."""
    return copy.deepcopy(
        {
            "weights": dict(model.named_parameters()),
            "optimizer": trainer.optimizer.state_dict()["state"],
            "ema": trainer.ema.state_dict(),
        }
    )


def assert_same(ours, theirs) -> None:
    if isinstance(ours, dict):
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert_same(ours[key], theirs[key])
    elif isinstance(ours, torch.Tensor):
        assert torch.equal(ours, theirs)
    else:
        assert ours == theirs


def count_read_backs(monkeypatch) -> list[int]:
    calls = []
    original = loop.read_back

    def counted(tensor):
        calls.append(1)
        return original(tensor)

    monkeypatch.setattr(loop, "read_back", counted)
    return calls


@pytest.mark.parametrize("optimizer", ["sgd", "adamw", "rmsprop"])
def test_a_nan_loss_skips_its_update_on_the_device_and_stops_at_the_read_back(
    monkeypatch, optimizer
):
    monkeypatch.setattr(loop, "READ_BACK_SECONDS", 1e9)  # read back at the epoch's end only
    read_backs = count_read_backs(monkeypatch)
    model = tiny_model()
    trainer, _ = make_trainer(
        model, 64, CONFIG.replace(optimizer=optimizer), CPU, None, Distributed()
    )
    started = trained_state(model, trainer)
    good = {}

    def on_step(state):
        if trainer.step == 3:  # after steps 0, 1, 2: the last good state
            good.update(trained_state(model, trainer))

    state = EpochState()
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 3 \(epoch batch 3\);"):
        train_epoch(
            model,
            make_batches(6),
            trainer,
            state,
            loss_fn=nan_from(3),
            on_step=on_step,
            progress=False,
        )
    # Steps 3, 4 and 5 ran on the device; none of them changed the weights, the optimizer state
    # (momentum, Adam's moments and step counts) or the EMA, and the host waited only once.
    assert read_backs == [1] and trainer.step == 6
    after = trained_state(model, trainer)
    assert_same(after, good)
    assert not torch.equal(
        after["weights"]["stem.conv.weight"], started["weights"]["stem.conv.weight"]
    )
    assert state.batch == 0  # the sums of a diverged epoch are not taken


def test_the_running_sums_are_read_back_every_read_back_seconds_and_at_the_end(monkeypatch):
    read_backs = count_read_backs(monkeypatch)
    states = []
    for seconds in (1e9, 0.0):
        monkeypatch.setattr(loop, "READ_BACK_SECONDS", seconds)
        model = tiny_model()
        trainer, _ = make_trainer(model, 64, CONFIG, CPU, None, Distributed())
        state = train_epoch(
            model, make_batches(5), trainer, EpochState(), loss_fn=cross_entropy, progress=False
        )
        states.append(state)
    assert len(read_backs) == 1 + 5  # once at the end; once a step when every read-back is due
    rare, often = states
    # Plain floats, the same wherever the read-backs fell (a resumed run reads back elsewhere).
    assert type(rare.loss_sum) is float and type(rare.sums["correct"]) is float
    assert (rare.batch, rare.seen, rare.loss_sum, rare.sums) == (
        often.batch,
        often.seen,
        often.loss_sum,
        often.sums,
    )
    assert rare.batch == 5 and rare.seen == 40


def test_under_torchrun_the_read_backs_fall_on_the_same_steps_in_every_process(monkeypatch):
    # Each process's clock differs: by time, one process could stop (a NaN) while the others
    # wait for it in the next all-reduce. By steps they all read back, and stop, together.
    read_backs = count_read_backs(monkeypatch)
    monkeypatch.setattr(loop, "all_sum", lambda tensor, distributed: tensor)  # no process group
    monkeypatch.setattr(loop, "READ_BACK_SECONDS", 0.0)  # would read back every step by time
    monkeypatch.setattr(loop, "READ_BACK_STEPS", 2)
    model = tiny_model()
    trainer, _ = make_trainer(model, 64, CONFIG, CPU, None, Distributed(rank=1, world_size=2))
    state = train_epoch(
        model, make_batches(5), trainer, EpochState(), loss_fn=cross_entropy, progress=False
    )
    assert len(read_backs) == 3  # after steps 2 and 4, and at the end
    assert state.batch == 5 and state.seen == 40


def test_no_step_reads_from_the_device(monkeypatch):
    # Every way a tensor's value reaches Python, outside read_back, is counted.
    monkeypatch.setattr(loop, "READ_BACK_SECONDS", 1e9)
    model = tiny_model()
    trainer, _ = make_trainer(model, 64, CONFIG, CPU, None, Distributed())
    reads = []
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original):
            reads.append(_name)
            return _original(self, *args)

        monkeypatch.setattr(torch.Tensor, name, counted)
    train_epoch(
        model, make_batches(4), trainer, EpochState(), loss_fn=cross_entropy, progress=False
    )
    assert reads == ["tolist"]  # the epoch's one read-back


def test_fused_sgd_follows_foreach_sgd_on_the_cpu():
    config = CONFIG.replace(weight_decay=5e-4, momentum=0.9, nesterov=True)
    weights = []
    for fused in (True, False):
        model = tiny_model()
        optimizer = make_optimizer(model, config)
        assert all(group["fused"] for group in optimizer.param_groups)
        if not fused:
            optimizer = torch.optim.SGD(
                optimizer.param_groups, lr=config.lr, momentum=0.9, nesterov=True, foreach=True
            )
        for images, labels in make_batches(4):
            optimizer.zero_grad()
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()
        weights.append(dict(model.named_parameters()))
    fused_weights, foreach_weights = weights
    for name, value in fused_weights.items():
        torch.testing.assert_close(value, foreach_weights[name], rtol=1e-5, atol=1e-6)


class ConvNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, stride=2, bias=False)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, images):
        features = F.relu(self.bn(self.conv(images)))
        return self.fc(features.mean((2, 3)))


def test_the_compiled_step_follows_the_eager_step(monkeypatch):
    monkeypatch.setattr(loop, "READ_BACK_SECONDS", 0.0)  # every step's loss, to compare
    trajectories, weights = [], []
    for compile_model in (False, True):
        torch.manual_seed(0)
        model = ConvNet()
        config = CONFIG.replace(compile=compile_model)
        trainer, _ = make_trainer(model, 64, config, CPU, None, Distributed())
        trained = run.compiled(model, CPU, Distributed()) if compile_model else model
        state, losses = EpochState(), []
        for batch in make_batches(1) * 5:  # one batch again and again: the loss falls
            before = state.loss_sum
            train_epoch(trained, [batch], trainer, state, loss_fn=cross_entropy, progress=False)
            losses.append((state.loss_sum - before) / 8)
        trajectories.append(losses)
        weights.append(dict(model.named_parameters()))
    eager, compiled = trajectories
    assert eager == pytest.approx(compiled, rel=1e-4)
    assert eager[-1] < eager[0]
    for name, value in weights[0].items():
        torch.testing.assert_close(value, weights[1][name], rtol=1e-4, atol=1e-5)


# --- fit with a training split that makes its own batches -----------------------------------------


class OwnBatches(torch.utils.data.Dataset):
    """A training split that hands fit its batches, already on the device."""

    def __init__(self, size: int = 32):
        generator = torch.Generator().manual_seed(1)
        self.images = torch.randn(size, 1, 28, 28, generator=generator)
        self.labels = torch.randint(0, 4, (size,), generator=generator)
        self.calls = []

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, sampler, batch_size: int, device: torch.device):
        self.calls.append((sampler.epoch, sampler.start_batch, batch_size, device))
        order = torch.tensor(sampler.indices())
        return [
            (self.images[chunk].to(device), self.labels[chunk].to(device))
            for chunk in order.split(batch_size)
        ]


class TinyTask:
    name = "tiny"
    config_type = TrainSettings
    score = "val_score"

    def __init__(self, loss_fn=cross_entropy):
        self.loss_fn = loss_fn
        self.train = OwnBatches()

    def prepare(self, config, saved_run, context) -> Job:
        preprocessing = Preprocessing(resolution=28, mean=(0.5,), std=(0.5,), channels=1)
        return Job(
            tiny_model(),
            self.train,
            self.loss_fn,
            lambda model: 0.5,
            ("a", "b", "c", "d"),
            preprocessing,
            record={},
        )

    def train_metrics(self, sums, seen) -> dict:
        return {"train_top1": sums["correct"] / seen}

    def val_metrics(self, evaluation) -> dict:
        return {"val_score": evaluation}

    def describe(self, row, epochs) -> str:
        return f"epoch {row['epoch']}/{epochs}"

    def finish(self, out, evaluation, history, run) -> None:
        pass


def test_fit_takes_the_batches_a_training_split_makes(tmp_path):
    task = TinyTask()
    result = run.fit(task, CONFIG.replace(epochs=2), tmp_path, progress=False)
    assert task.train.calls == [(0, 0, 8, CPU), (1, 0, 8, CPU)]
    assert [row["step"] for row in result.history] == [4, 8]
    assert all(0 <= row["train_top1"] <= 1 for row in result.history)


def test_a_nan_loss_is_never_saved_mid_epoch(tmp_path):
    # A state is saved after every step; step 5 (epoch 2, batch 1) is the first NaN: the save
    # after it reads back, finds it, and stops the run before writing.
    task = TinyTask(loss_fn=nan_from(5))
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 5 \(epoch batch 1\)"):
        run.fit(task, CONFIG.replace(epochs=3, state_every=1), tmp_path, progress=False)
    state = torch.load(tmp_path / STATE_FILE, weights_only=True)
    assert (state["step"], state["epoch"], state["epoch_state"]["batch"]) == (5, 1, 1)
    assert all(v.isfinite().all() for v in state["model"].values() if v.is_floating_point())
    assert all(v.isfinite().all() for v in state["ema"].values() if v.is_floating_point())
    assert math.isfinite(state["epoch_state"]["loss_sum"])
    weights = load_file(tmp_path / LAST)
    assert all(v.isfinite().all() for v in weights.values() if v.is_floating_point())
    rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1 and math.isfinite(json.loads(rows[0])["train_loss"])
