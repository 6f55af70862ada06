"""The task commands as one table: a row per task, a column per action (train, eval, predict,
export, quantize), each cell the [`Command`][mobilenets.cli.common.Command] its task module
defines from the shared pieces in [`arguments`][mobilenets.cli.arguments] and
[`training`][mobilenets.cli.training].

Classification's actions are commands of their own (``mobilenets train``); another task's are
the actions of its command (``mobilenets detect train``).
"""

from __future__ import annotations

from dataclasses import dataclass

from mobilenets.cli import (
    classify,
    classify_export,
    detect,
    detect_export,
    segment,
    segment_export,
)
from mobilenets.cli.common import Command, Parser


@dataclass(frozen=True, kw_only=True)
class TaskCommands:
    """One task's row: the command word its actions come under (None: they are commands of
    their own), that command's line in the list and the heading of its --help, and its
    actions."""

    word: str | None = None
    help: str = ""
    description: str = ""
    train: Command
    eval: Command
    predict: Command
    export: Command
    quantize: Command

    @property
    def actions(self) -> tuple[Command, ...]:
        return (self.train, self.eval, self.predict, self.export, self.quantize)


CLASSIFICATION = TaskCommands(
    train=classify.TRAIN,
    eval=classify.EVAL,
    predict=classify.PREDICT,
    export=classify_export.EXPORT,
    quantize=classify_export.QUANTIZE,
)
DETECTION = TaskCommands(
    word="detect",
    help="SSDLite object detection: train, eval (COCO mAP), predict, export, quantize",
    description="SSDLite on a MobileNet backbone (V2 paper section 6.2, V3 section 6.2): train "
    "it, measure COCO mAP, draw its detections, export it to ONNX or ExecuTorch, fp32 or int8.",
    train=detect.TRAIN,
    eval=detect.EVAL,
    predict=detect.PREDICT,
    export=detect_export.EXPORT,
    quantize=detect_export.QUANTIZE,
)
SEGMENTATION = TaskCommands(
    word="segment",
    help="DeepLabv3 and LR-ASPP semantic segmentation: train, eval (mIoU), predict, export, "
    "quantize",
    description="Mobile DeepLabv3 (V2 paper section 6.3) or LR-ASPP (V3 section 6.4) on a "
    "MobileNet backbone: train it, measure mIoU, draw its masks, export it to ONNX or "
    "ExecuTorch, fp32 or int8.",
    train=segment.TRAIN,
    eval=segment.EVAL,
    predict=segment.PREDICT,
    export=segment_export.EXPORT,
    quantize=segment_export.QUANTIZE,
)


def add_task_commands(commands, task: TaskCommands) -> None:
    """The commands of ``task`` into ``commands``, the program's sub-parsers: its actions, or
    its command word with the actions under it."""
    if task.word is not None:
        group = commands.add_parser(task.word, help=task.help, description=task.description)
        commands = group.add_subparsers(
            dest="action", required=True, parser_class=Parser, title="actions", metavar="ACTION"
        )
    for action in task.actions:
        action.add_to(commands)
