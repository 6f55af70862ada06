"""The optimizer, the learning-rate schedule and the weight EMA."""

import pytest
import torch

from mobilenets import create_model
from mobilenets.engine.optim import lr_factor, make_ema, make_optimizer
from mobilenets.tasks.classification.train import train_config


def test_schedule_warms_up_then_follows_cosine_or_the_papers_staircase():
    cosine = train_config("modern", epochs=10, warmup_epochs=1)
    assert lr_factor(0, 100, cosine) == pytest.approx(0.01)
    assert lr_factor(99, 100, cosine) == pytest.approx(1.0)
    assert lr_factor(100, 100, cosine) == pytest.approx(1.0)
    assert lr_factor(550, 100, cosine) == pytest.approx(0.5)
    assert lr_factor(1000, 100, cosine) == pytest.approx(0.0)
    paper = train_config("paper", epochs=10)
    assert lr_factor(99, 100, paper) == 1.0
    assert lr_factor(100, 100, paper) == pytest.approx(0.98)
    assert lr_factor(350, 100, paper) == pytest.approx(0.98**3)


def test_poly_schedule_is_deeplabs_power_0_9_decay():
    poly = train_config("modern", epochs=10, warmup_epochs=0, schedule="poly")
    assert lr_factor(0, 100, poly) == 1.0
    assert lr_factor(500, 100, poly) == pytest.approx(0.5**0.9)
    assert lr_factor(750, 100, poly) == pytest.approx(0.25**0.9)
    assert lr_factor(1000, 100, poly) == 0.0


def test_weight_decay_skips_batch_norm_and_biases():
    model = create_model("mobilenet_v2", alpha=0.35, num_classes=10, resolution=32)
    decayed, plain = make_optimizer(model, train_config("modern", weight_decay=1e-4)).param_groups
    assert decayed["weight_decay"] == 1e-4 and plain["weight_decay"] == 0.0
    assert all(p.ndim == 4 or p.ndim == 2 for p in decayed["params"])
    assert {p.ndim for p in plain["params"]} == {1}
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))


def test_ema_follows_tfs_num_updates_warmup():
    module = torch.nn.Linear(1, 1, bias=False)
    ema = make_ema(module, decay=0.9)
    expected = None
    for n, value in enumerate([1.0, 2.0, 3.0, 4.0]):
        module.weight.data.fill_(value)
        ema.update_parameters(module)
        rate = min(0.9, (1 + n) / (10 + n))  # n earlier updates
        expected = value if expected is None else expected * rate + value * (1 - rate)
    assert ema.module.weight.item() == pytest.approx(expected)
    assert ema.module.weight.item() != module.weight.item()
    norm = torch.nn.BatchNorm1d(2)
    ema = make_ema(norm, decay=0.9)
    for _ in range(3):
        norm.train()(torch.randn(4, 2))
        ema.update_parameters(norm)
    assert ema.module.num_batches_tracked.item() == norm.num_batches_tracked.item() == 3
    assert not torch.equal(ema.module.running_mean, norm.running_mean)
