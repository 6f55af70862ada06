"""``demo web``: the int8 classifier and detector in the browser, with onnxruntime-web.

The library module (mobilenets.deploy.web_demo) needs the onnx extra and the detector's export
the detection task, so the command imports them when it runs (see the package's docstring).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from mobilenets.cli.common import Parser, add_command
from mobilenets.core.errors import MobileNetsError
from mobilenets.data.classification import SPEC_HELP
from mobilenets.data.detection import DATA_HELP
from mobilenets.engine.checkpoint import load_checkpoint

# web_demo's names, repeated so that --help does not import it (tests/cli checks them)
CLASSIFIER, DETECTOR = "classifier", "detector"
MANIFEST = "manifest.json"
DEFAULT_OUT = "runs/web-demo"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DATA_FLAGS = {
    CLASSIFIER: ("--classifier-data", SPEC_HELP),
    DETECTOR: ("--detector-data", DATA_HELP),
}


def add_commands(commands) -> None:
    demo = commands.add_parser(
        "demo",
        help="the models at work: a browser page that runs the int8 classifier and detector",
        description="Demonstrations of trained models.",
    )
    actions = demo.add_subparsers(
        dest="action", required=True, parser_class=Parser, title="actions", metavar="ACTION"
    )
    add_web(actions)


def add_web(actions) -> None:
    parser = add_command(
        actions,
        "web",
        run_web,
        help="export int8 ONNX files and serve a page that runs them with onnxruntime-web",
        description="Quantize a classifier and/or a detector checkpoint to int8 ONNX (the "
        "detector with NMS inside), write them with a manifest into a folder, and serve the "
        "page in web/ that runs them in the browser with onnxruntime-web: pick an image or start "
        "the camera, see the top-5 or the boxes and the latency per frame. Needs a source "
        "checkout with `npm ci --prefix web` run once.",
    )
    parser.add_argument(
        "models",
        nargs="+",
        metavar="MODEL",
        help="a classifier or detector checkpoint (a .safetensors file or run folder), an ONNX "
        "file of ours (mobilenets quantize, detect export --nms; used as it is), or a folder "
        "this command wrote (served again as it is); one classifier and one detector at most",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        help=f"the folder to write, new or written by this command before (default {DEFAULT_OUT})",
    )
    for kind, (flag, text) in DATA_FLAGS.items():
        parser.add_argument(
            flag,
            metavar="SPEC",
            help=f"the {kind} checkpoint's training data, whose images calibrate the int8 "
            f"ranges: {text} (default: the dataset its training run recorded)",
        )
    parser.add_argument(
        "--calibration-images",
        type=int,
        metavar="N",
        help="training images that set the activation ranges (default 512, or all if fewer)",
    )
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help="address to serve on (default %(default)s)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help="port to serve on, 0: a free one (default %(default)s)",
    )
    parser.add_argument(
        "--no-serve",
        action="store_true",
        help="write the folder and stop; give the folder as MODEL to serve it later",
    )


def run_web(args: argparse.Namespace) -> None:
    from mobilenets.deploy import web_demo

    if not args.no_serve:
        web_demo.check_web()  # before the export, which takes a while
    given = [Path(path) for path in args.models]
    if len(given) == 1 and (given[0] / MANIFEST).is_file():
        stray = [
            flag
            for flag, value in (
                ("--out", args.out),
                ("--classifier-data", args.classifier_data),
                ("--detector-data", args.detector_data),
                ("--calibration-images", args.calibration_images),
            )
            if value is not None
        ]
        if stray:
            raise MobileNetsError(
                f"{stray[0]} applies to an export; {str(given[0])!r} is a demo folder, served as "
                "it is"
            )
        demo = web_demo.load_demo(given[0])
        print(f"{demo.folder}: as written before")
    else:
        demo = export_models(args, web_demo)
        print(f"wrote {demo.folder}")
    for model in demo.models:
        print(f"  {describe(model)}")
    if args.no_serve:
        return
    server = web_demo.serve_demo(demo.folder, host=args.host, port=args.port)
    print(f"serving the page at {server.url} (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.server_close()


def export_models(args: argparse.Namespace, web_demo):
    """The demo folder from the models given: checkpoints quantized to int8, ONNX files as
    they are."""
    sources = {}
    for path in args.models:
        kind = web_demo.source_kind(path)
        if kind in sources:
            raise MobileNetsError(
                f"{sources[kind]!r} and {path!r} are both {kind}s; the demo runs one classifier "
                "and one detector"
            )
        sources[kind] = path
    out = Path(args.out or DEFAULT_OUT)
    web_demo.check_out_folder(out)
    checkpoints = {}
    for kind, path in sources.items():
        if Path(path).suffix != ".onnx":
            checkpoints[kind] = load_model_checkpoint(kind, path)
    for kind, (flag, _) in DATA_FLAGS.items():
        if getattr(args, f"{kind}_data") is not None and kind not in checkpoints:
            raise MobileNetsError(f"{flag} applies to a {kind} checkpoint, and none is given")
    if args.calibration_images is not None and not checkpoints:
        raise MobileNetsError(
            "--calibration-images applies to a checkpoint, and only ONNX files are given"
        )
    datasets = {
        kind: training_data(kind, checkpoint, args) for kind, checkpoint in checkpoints.items()
    }
    calibration = args.calibration_images
    files = dict(sources)
    with tempfile.TemporaryDirectory(prefix="mobilenets-demo-") as folder:
        for kind, checkpoint in checkpoints.items():
            data = datasets[kind]
            path = Path(folder) / f"{kind}.onnx"
            if kind == CLASSIFIER:
                web_demo.quantize_classifier(checkpoint, data, path, calibration_images=calibration)
            else:
                write_detector(checkpoint, data, path, calibration, web_demo)
            files[kind] = path
        return web_demo.export_demo(
            out, classifier=files.get(CLASSIFIER), detector=files.get(DETECTOR)
        )


def load_model_checkpoint(kind: str, path: str):
    if kind == CLASSIFIER:
        return load_checkpoint(path)
    from mobilenets.tasks.detection.inference import load_detection_checkpoint

    return load_detection_checkpoint(path)


def training_data(kind: str, checkpoint, args: argparse.Namespace) -> str:
    """The data spec whose training images calibrate ``checkpoint``: the flag's, else the one
    its training run recorded."""
    flag, text = DATA_FLAGS[kind]
    data = getattr(args, f"{kind}_data") or (checkpoint.train_config or {}).get("data")
    if not data:
        raise MobileNetsError(
            f"the int8 {kind} is calibrated on training images, and {str(checkpoint.path)!r} "
            f"records no dataset: give {flag} SPEC ({text})"
        )
    return data


def write_detector(
    checkpoint, data: str, path: Path, calibration_images: int | None, web_demo
) -> None:
    """The int8 detector the page runs, NMS inside: the network int8 and the decoding and NMS
    float, calibrated on ``calibration_images`` training images of ``data`` (default 256, or
    all if fewer), one at a time as the file's batch is 1."""
    from mobilenets.deploy.quantize import calibration_batches, calibration_indices
    from mobilenets.tasks.detection.inference import checkpoint_data
    from mobilenets.tasks.detection.quantize import (
        DEFAULT_CALIBRATION_IMAGES,
        quantize_detector_onnx,
    )

    train = checkpoint_data(checkpoint, data, splits=("train",)).train
    count = calibration_images or min(DEFAULT_CALIBRATION_IMAGES, len(train))
    batches = calibration_batches(train, calibration_indices(len(train), count), 1)
    quantize_detector_onnx(checkpoint, path, batches, nms=True)
    web_demo.read_model_file(path)  # a file the page cannot use is reported here


def describe(model) -> str:
    """One line of a demo model: file, name, precision, classes, input, size."""
    images = (model.quantization or {}).get("calibration_images")
    precision = "fp32" if model.quantization is None else "int8"
    if images:
        precision += f", calibrated on {images} training images"
    classes = len(model.classes) - (model.kind == DETECTOR)  # a detector's first is background
    side = model.preprocessing.resolution
    return (
        f"{model.file}: {model.kind} {model.model_name} ({precision}), {classes} classes, input "
        f"{model.preprocessing.channels}x{side}x{side}, {model.file_bytes / 1e6:.1f} MB"
    )
