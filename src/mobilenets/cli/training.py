"""What every task's ``train`` shares: the flags that set a training config's fields (those of
[`TrainSettings`][mobilenets.engine.settings.TrainSettings] and the ones several tasks have),
the run folder and ``--resume``, the defaults the help states, and the call of the task's fit."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

from mobilenets.cli.arguments import DEVICE_HELP
from mobilenets.cli.common import Command
from mobilenets.core.errors import MobileNetsError
from mobilenets.engine.checkpoint import BEST, LAST, STATE_FILE
from mobilenets.engine.run import FitResult
from mobilenets.engine.settings import AMPS, OPTIMIZERS, PLACEMENT, SCHEDULES, TrainSettings


class Setting(NamedTuple):
    """A flag that sets the config field of its name (``--batch-size``: ``batch_size``).

    ``kind`` is the value's type, or an argparse action for a switch; a switch not given is
    None, as is every value, so that the config's default (or the resumed run's) applies."""

    flag: str
    kind: Any
    help: str
    metavar: str | None = None


# The optimizer's settings come first in both commands, the run's last.
OPTIMIZER_SETTINGS = (
    Setting("--epochs", int, "passes over the training set", "N"),
    Setting("--batch-size", int, "images per step and process", "B"),
    Setting("--lr", float, "peak learning rate", "LR"),
    Setting("--optimizer", str, f"one of {', '.join(OPTIMIZERS)}"),
    Setting("--momentum", float, "SGD momentum, or RMSProp's", "M"),
)
RUN_SETTINGS = (
    Setting(
        "--amp",
        str,
        f"mixed precision, one of {', '.join(AMPS)}; auto: bf16 on a GPU that has it, else off",
    ),
    Setting("--seed", int, "seed of initialisation, data order and augmentation"),
    Setting("--workers", int, "data loader processes; 0 loads in the training process", "W"),
    Setting(
        "--state-every",
        int,
        "steps between mid-epoch saves of the run's state; 0: by time only",
        "N",
    ),
    Setting("--state-minutes", float, "minutes between mid-epoch saves of the run's state", "MIN"),
    Setting("--device", str, DEVICE_HELP),
    Setting(
        "--channels-last",
        argparse.BooleanOptionalAction,
        "channels_last memory format, faster with convolutions on most hardware",
    ),
    Setting(
        "--compile",
        "store_true",
        "the fast path on a GPU: torch.compile the model's "
        "forward and backward, and capture each step as a CUDA graph (seldom faster on a "
        "CPU)",
    ),
)
SCHEDULE_SETTING = Setting("--schedule", str, f"learning rate schedule: {', '.join(SCHEDULES)}")
# Settings of more than one task, each placed among its task's where it reads best.
NESTEROV_SETTING = Setting(
    "--nesterov", argparse.BooleanOptionalAction, "nesterov momentum for SGD"
)
CONV_WEIGHT_DECAY_SETTING = Setting("--weight-decay", float, "L2 on conv weights", "WD")
LR_DECAY_SETTING = Setting("--lr-decay", float, "per-epoch factor of the exponential schedule", "F")
WARMUP_SETTING = Setting("--warmup-epochs", float, "linear warmup length", "E")
EMA_SETTING = Setting("--ema-decay", float, "weight EMA decay; 0: no EMA", "D")
BACKBONE_WEIGHTS_SETTING = Setting(
    "--backbone-weights",
    str,
    "start the backbone from torchvision, timm or keras "
    "ImageNet weights, or from a classification checkpoint (default: from scratch)",
    "SRC",
)


def data_setting(data_help: str) -> Setting:
    """--data of a task whose config has no default dataset (see
    [`data_required`][mobilenets.cli.training.data_required])."""
    return Setting("--data", str, f"required unless --resume: {data_help}", "SPEC")


def field_name(flag: str) -> str:
    return flag.removeprefix("--").replace("-", "_")


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def field_defaults(config_type: type) -> dict[str, Any]:
    return {field.name: field.default for field in dataclasses.fields(config_type)}


def default_text(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return format(value, "g") if isinstance(value, float) else str(value)


def task_defaults(task_defaults: dict[str, Any]) -> dict[str, str]:
    """The defaults a task's train flags state: TrainSettings' with ``task_defaults``, the task
    config's where they differ, on top."""
    values = {**field_defaults(TrainSettings), **task_defaults}
    return {name: default_text(value) for name, value in values.items() if value not in (None, "")}


def train_command(
    run: Callable[[argparse.Namespace], None],
    help: str,
    description: str,
    settings: Iterable[Setting],
    defaults: dict[str, str],
    *,
    out_help: str = "the run folder for checkpoints, metrics and plots",
) -> Command:
    """A task's ``train``: the flags of ``settings`` around the run folder's (see
    [`add_training_arguments`][mobilenets.cli.training.add_training_arguments])."""

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_training_arguments(parser, settings, defaults, out_help=out_help)

    return Command("train", help, description, add_arguments, run)


def add_training_arguments(
    parser: argparse.ArgumentParser,
    settings: Iterable[Setting],
    defaults: dict[str, str],
    *,
    out_help: str,
) -> None:
    """--out, --resume, one flag per setting (its help closed by its entry of ``defaults``,
    if any) and --no-progress."""
    parser.add_argument("--out", required=True, metavar="DIR", help=out_help)
    placement = ", ".join(flag_name(name) for name in PLACEMENT)
    parser.add_argument(
        "--resume",
        action="store_true",
        help=f"continue the run in --out from its state (DIR/{STATE_FILE.as_posix()}) with its "
        f"own settings; of the settings, only {placement} may be given with it",
    )
    for setting in settings:
        default = defaults.get(field_name(setting.flag))
        text = setting.help + (f" (default {default})" if default else "")
        text = text.replace("%", "%%")  # argparse formats help texts with %
        if isinstance(setting.kind, type) and issubclass(setting.kind, argparse.Action):
            parser.add_argument(setting.flag, action=setting.kind, help=text)
        elif setting.kind == "store_true":
            parser.add_argument(setting.flag, action="store_true", default=None, help=text)
        else:
            parser.add_argument(setting.flag, type=setting.kind, metavar=setting.metavar, help=text)
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars or lines; the per-epoch summaries stay",
    )


def resume_placement(given: dict) -> dict:
    """Of the settings given with --resume, those it may change (where the run executes); any
    other is an error, as the saved run keeps its own."""
    other = sorted(flag_name(name) for name in given if name not in PLACEMENT)
    if other:
        allowed = ", ".join(flag_name(name) for name in PLACEMENT)
        raise MobileNetsError(
            f"--resume continues the saved run with its own settings; drop "
            f"{', '.join(other)} (it may change only {allowed})"
        )
    return given


def data_required(config_type: type[TrainSettings], data_help: str) -> Callable[..., TrainSettings]:
    """``config_type`` made from the settings given, which must name --data: a new run of a task
    whose config has no default dataset (a resumed run has its own)."""

    def make_config(**settings) -> TrainSettings:
        if "data" not in settings:
            raise MobileNetsError(f"--data is required (one of: {data_help})")
        return config_type(**settings)

    return make_config


def fit_from(
    args: argparse.Namespace,
    config_type: type[TrainSettings],
    make_config: Callable[..., TrainSettings],
    fit,
) -> FitResult | None:
    """Run ``fit`` as the flags say: a new run with ``make_config(**settings given)``, or with
    --resume the saved run with only its placement changed. None on the other processes of a
    torchrun job, which print nothing."""
    fields = field_defaults(config_type)
    given = {
        name: value for name, value in vars(args).items() if name in fields and value is not None
    }
    if args.resume:
        config, placement = None, resume_placement(given)
    else:
        config, placement = make_config(**given), None
    result = fit(
        config, args.out, resume=args.resume, placement=placement, progress=not args.no_progress
    )
    return result if result.main_process else None


def run_files(out: Path, *more: str) -> str:
    """Where a finished run's files are: its checkpoints, ``more`` lines, its metrics."""
    return "\n".join(
        [
            f"checkpoint: {out / BEST} (last: {out / LAST})",
            *more,
            f"metrics: {out / 'metrics.jsonl'}, {out / 'eval.json'}",
        ]
    )
