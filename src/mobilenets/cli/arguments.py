"""The flags several commands take, each written once: the checkpoint, the data loader and device,
JSON output, and an export's file, format, opset and int8 calibration; with the checks of the
flags that apply only with another one.

The choices an export's flags show repeat the library's (importing it needs the onnx extra);
tests/cli checks that they are the same.
"""

from __future__ import annotations

import argparse

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.families import V3_WIDTH_RULES, families, get_family
from mobilenets.zoo.pretrained import PUBLISHERS

PUBLISHED_WEIGHTS = (
    f"{', '.join(PUBLISHERS)} (or SOURCE:TAG, e.g. torchvision:IMAGENET1K_V2, "
    "mobilenets:fashion-mnist)"
)
DEVICE_HELP = "auto (a GPU if there is one), cpu or cuda[:N]"
CHECKPOINT_HELP = "a .safetensors checkpoint, or a run folder (its best.safetensors)"
EXPORT_FORMATS = ("onnx", "pte")
FORMAT_HELP = "onnx, or pte: ExecuTorch with the XNNPACK delegate (needs mobilenets[mobile])"
OPSET_HELP = "ONNX opset, 18 to 23 (default 18)"
CALIBRATE_METHODS = ("minmax", "entropy", "percentile")  # deploy.quantize's
INT8_FLAGS = ("--data", "--calibration-images", "--calibrate")


def dest(flag: str) -> str:
    """The attribute argparse stores a flag in: ``--calibration-images``, ``calibration_images``."""
    return flag.removeprefix("--").replace("-", "_")


# --- a model and its data -----------------------------------------------------------------------


def add_checkpoint_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CKPT", help=CHECKPOINT_HELP)


def add_eval_arguments(parser: argparse.ArgumentParser, data_help: str, *, batch_size: int) -> None:
    """The flags of a task's ``eval``, before the task's own: the checkpoint, the dataset whose
    validation split scores it, the loader (see ``loader_options``) and --json FILE."""
    add_checkpoint_argument(parser)
    parser.add_argument("--data", required=True, metavar="SPEC", help=data_help)
    add_loader_arguments(parser, batch_size=batch_size)
    add_json_file_argument(parser)


def loader_options(args: argparse.Namespace) -> dict:
    """The keywords of a library evaluation that the loader flags set."""
    return dict(batch_size=args.batch_size, workers=args.workers, device=args.device)


def add_loader_arguments(parser: argparse.ArgumentParser, *, batch_size: int) -> None:
    """--batch-size, --workers and --device of a command that evaluates on a dataset."""
    parser.add_argument(
        "--batch-size",
        type=int,
        default=batch_size,
        metavar="B",
        help="images per batch (default %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="W",
        help="data loader processes (default %(default)s: none)",
    )
    add_device_argument(parser, "auto")


def add_device_argument(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--device", default=default, help=f"{DEVICE_HELP} (default %(default)s)")


def add_images_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")


def add_json_file_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", metavar="FILE", help="also write the results to FILE as JSON")


def add_json_switch(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--json", action="store_true", help=f"print {what}")


def add_timing_arguments(parser, *, warmup: int, iterations: int) -> None:
    """--threads, --warmup and --iterations of a latency measurement (bench, zoo --chart)."""
    parser.add_argument(
        "--threads", type=int, metavar="N", help="threads of every runtime (default: torch's)"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=warmup,
        metavar="W",
        help="untimed runs first (default %(default)s)",
    )
    parser.add_argument(
        "--iterations",
        type=int,
        default=iterations,
        metavar="K",
        help="timed runs (default %(default)s)",
    )


# --- an export's file ---------------------------------------------------------------------------


def add_format_argument(
    parser: argparse.ArgumentParser, help: str = FORMAT_HELP, *, required: bool = True
) -> None:
    parser.add_argument("--format", required=required, choices=EXPORT_FORMATS, help=help)


def add_out_file_argument(parser: argparse.ArgumentParser, what: str = "the .onnx or .pte") -> None:
    parser.add_argument("--out", required=True, metavar="FILE", help=f"{what} file to write")


def add_opset_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--opset", type=int, metavar="N", help=f"{OPSET_HELP}; onnx only")


def add_dynamic_batch_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dynamic-batch",
        action="store_true",
        help="a dynamic batch axis (default: batch 1); onnx only",
    )


def add_int8_arguments(
    parser: argparse.ArgumentParser,
    *,
    int8_help: str,
    data_help: str,
    calibration_images: int,
    calibrate_help: str | None = None,
    always: bool = False,
) -> None:
    """--int8 and the flags that apply with it only: --data, whose training images calibrate
    the int8 ranges, --calibration-images (``calibration_images`` when not given) and, where
    ``calibrate_help`` is given, --calibrate, onnxruntime's calibration method (its help says
    what it applies to after --int8's: ``onnx: ...``). ``always``: a
    command that writes int8 only (a task's ``quantize``), without the switch and with --data
    required."""
    where = "" if always else "--int8: "
    if always:
        parser.set_defaults(int8=True)
    else:
        parser.add_argument("--int8", action="store_true", help=int8_help)
    parser.add_argument(
        "--data",
        required=always,
        metavar="SPEC",
        help=f"{where}the checkpoint's dataset, {data_help}",
    )
    parser.add_argument(
        "--calibration-images",
        type=int,
        metavar="N",
        help=f"{where}training images that set the activation ranges (default "
        f"{calibration_images}, or all if fewer)",
    )
    if calibrate_help is not None:
        parser.add_argument(
            "--calibrate",
            choices=CALIBRATE_METHODS,
            help=("" if always else "--int8, ") + calibrate_help,
        )


# --- flags that apply only with another --------------------------------------------------------


def check_int8_flags(args: argparse.Namespace, missing_data: str | None = None) -> None:
    """Without --int8, none of --data, --calibration-images and --calibrate may be given; with
    it, --data must be, else ``missing_data`` is the error (None: --data has a default)."""
    if not args.int8:
        check_unused(args, INT8_FLAGS, "applies to --int8 only")
    elif args.data is None and missing_data is not None:
        raise MobileNetsError(missing_data)


def check_unused(args: argparse.Namespace, flags: tuple[str, ...], reason: str) -> None:
    """The first of ``flags`` that was given (set, or a switch turned on) is an error: the flag
    and then ``reason``, as ``--opset applies to --format onnx only``."""
    for flag in flags:
        value = getattr(args, dest(flag), None)
        if value is not None and value is not False:
            raise MobileNetsError(f"{flag} {reason}")


# The flags of V3's variants, and the config fields they set.
V3_FLAGS = {
    "--width-rule": "width_rule",
    "--minimalistic": "minimalistic",
    "--reduced-tail": "reduced_tail",
}


def add_v3_arguments(parser: argparse.ArgumentParser) -> None:
    """--width-rule, --minimalistic and --reduced-tail: V3's variants (ModelConfig's fields)."""
    v3 = ", ".join(arch for arch in families() if get_family(arch).width_rules)
    parser.add_argument(
        "--width-rule",
        choices=V3_WIDTH_RULES,
        help=f"{v3}: how alpha sets the widths, tf (TF-slim, Keras, timm) or torchvision; at "
        "alpha 1 the same network (default tf)",
    )
    parser.add_argument(
        "--minimalistic",
        action="store_true",
        default=None,
        help=f"{v3}: no SE, ReLU everywhere, 3x3 depthwise convs (TF-slim's and Keras's variant)",
    )
    parser.add_argument(
        "--reduced-tail",
        action="store_true",
        default=None,
        help=f"{v3}: the last stage, head conv and pre-logits layer at half width (torchvision's "
        "reduced_tail, the paper's detection and segmentation backbone)",
    )


def v3_fields(args: argparse.Namespace) -> dict:
    """The V3 config fields the flags set (none when no flag is given)."""
    values = {field: getattr(args, field) for field in V3_FLAGS.values()}
    return {field: value for field, value in values.items() if value is not None}
