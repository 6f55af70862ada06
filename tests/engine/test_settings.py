"""The training settings every task shares are validated once, the same way for every task."""

import dataclasses

import pytest

from mobilenets.core.errors import MobileNetsError
from mobilenets.engine.settings import PLACEMENT, TrainSettings
from mobilenets.tasks import classification, detection

TASK_CONFIGS = (classification.TrainConfig, detection.TrainConfig)


@pytest.mark.parametrize("config_type", TASK_CONFIGS)
@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(optimizer="adam"), "optimizer must be one of sgd, rmsprop, adamw, got 'adam'"),
        (dict(schedule="step"), "schedule must be one of cosine, exponential, poly, got 'step'"),
        (dict(amp="int8"), "amp must be one of auto, off, bf16, fp16, got 'int8'"),
        (dict(epochs=0), "epochs must be positive, got 0"),
        (dict(batch_size=True), "batch_size must be positive, got True"),
        (dict(lr=-0.1), "lr must be positive, got -0.1"),
        (dict(momentum=1.0), "momentum must be in [0, 1), got 1.0"),
        (dict(ema_decay=-0.5), "ema_decay must be in [0, 1), got -0.5"),
        (dict(lr_decay=0.0), "lr_decay must be in (0, 1], got 0.0"),
        (dict(weight_decay=-1e-4), "weight_decay must be >= 0, got -0.0001"),
        (dict(state_every=-1), "state_every must be >= 0, got -1"),
    ],
)
def test_every_task_refuses_a_bad_shared_setting_with_the_same_message(
    config_type, changes, message
):
    with pytest.raises(MobileNetsError) as error:
        config_type(**changes)
    assert str(error.value) == message


@pytest.mark.parametrize("config_type", TASK_CONFIGS)
def test_every_task_config_is_the_shared_settings_and_round_trips(config_type):
    shared = {field.name for field in dataclasses.fields(TrainSettings)}
    assert shared <= {field.name for field in dataclasses.fields(config_type)}
    assert set(PLACEMENT) <= shared
    config = config_type(epochs=3, state_minutes=2.5)
    assert config_type.from_dict(config.to_dict()) == config
    with pytest.raises(MobileNetsError, match=r"unknown training settings \['checkpoint_every'\]"):
        config_type.from_dict({**config.to_dict(), "checkpoint_every": 1})


def test_the_tasks_keep_their_own_defaults():
    classify, detect = classification.TrainConfig(), detection.TrainConfig()
    assert (classify.optimizer, classify.lr, classify.batch_size) == ("sgd", 0.1, 128)
    assert (detect.optimizer, detect.lr, detect.batch_size) == ("adamw", 3e-3, 32)
    assert (classify.data, detect.data) == ("fashion-mnist", "synthetic-shapes:1000")
