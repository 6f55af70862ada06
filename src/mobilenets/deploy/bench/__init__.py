"""CPU inference latency across runtimes, against PyTorch eager measured in the same run.

Every model is measured in PyTorch eager fp32 (channels_last, ``torch.inference_mode``): the
reference each other runtime's median is divided by, at the same batch size. A model is a
classifier, a Mobile DeepLabv3 segmenter (a registered name such as ``deeplabv3_mobilenet_v2``, at
its ``output_stride`` and ``aspp`` when given, or a segmentation checkpoint) or an SSDLite detector
(``ssdlite_mobilenet_v2`` or a detection checkpoint), measured at its input size (513 for a
registered segmenter and 320 for a registered detector unless ``resolution`` says otherwise).
Beside it onnxruntime runs the fp32 export (dynamic batch, written to a temporary folder by the
export pipeline: a classifier by
[`export_onnx`][mobilenets.deploy.onnx_export.export_onnx], a segmenter or detector by
[`write_onnx`][mobilenets.deploy.onnx_export.write_onnx], a detector's file returning the raw head
outputs ``cls_logits`` and ``box_regression``, as its forward does, without box decoding),
optionally an int8 file made on the fly from it by
[`quantize_file`][mobilenets.deploy.quantize.quantize_file], and any ``.onnx`` file given (an int8
file written by ``mobilenets quantize``, say). The int8 file made here is calibrated on random
normal inputs (or a checkpoint's training images, given a validation): its speed is real, its
accuracy means nothing on random inputs. With ``pte`` (and for any ``.pte`` file given) ExecuTorch
runs a program whose layers are in the XNNPACK delegate
([`write_pte`][mobilenets.deploy.executorch_export.write_pte]; int8 by
[`quantize_pt2e`][mobilenets.deploy.pt2e.quantize_pt2e]): a .pte program has a fixed batch, so one
is exported per batch size; a segmenter's or detector's program returns one tensor (a detector's
two outputs concatenated on the last axis).

Timings are wall-clock (``time.perf_counter``) per call: W untimed warm-up calls, then K timed
ones; median and 90th percentile are reported. The record with the smallest median of each model
and batch is marked ``fastest``. No argparse here: ``mobilenets bench`` and
``benchmarks/deploy_cpu.py`` call [`run_benchmarks`][mobilenets.deploy.bench.run.run_benchmarks].

The package, one concern a module: ``sources`` (what is measured), ``exports`` (the files bench
writes to measure), ``runtimes`` (each runtime as a runner), ``timing``, ``scoring`` (the accuracy
column), ``report`` (records and the table) and ``run`` (a run of all of them). Its names are
imported from here.
"""

from mobilenets.deploy.bench.exports import CALIBRATION_IMAGES
from mobilenets.deploy.bench.report import (
    FASTEST_MARK,
    HEADERS,
    SYNTHETIC_NOTE,
    BenchRecord,
    environment,
    mark_fastest,
    markdown_table,
    notes,
    table_rows,
)
from mobilenets.deploy.bench.run import run_benchmarks
from mobilenets.deploy.bench.runtimes import (
    DETECTOR_OUTPUTS,
    EAGER,
    OPENVINO,
    ORT,
    PTE,
    Forward,
    RuntimeModel,
    kept_signal_stack,
    openvino_model,
    state_dict_mb,
)
from mobilenets.deploy.bench.scoring import Validation
from mobilenets.deploy.bench.sources import QUANTIZED_OPS, load_source, onnx_precision
from mobilenets.deploy.bench.timing import (
    DEFAULT_BATCHES,
    DEFAULT_ITERATIONS,
    DEFAULT_WARMUP,
    Timing,
    check_count,
    measure,
)

__all__ = [
    "CALIBRATION_IMAGES",
    "DEFAULT_BATCHES",
    "DEFAULT_ITERATIONS",
    "DEFAULT_WARMUP",
    "DETECTOR_OUTPUTS",
    "EAGER",
    "FASTEST_MARK",
    "HEADERS",
    "OPENVINO",
    "ORT",
    "PTE",
    "QUANTIZED_OPS",
    "SYNTHETIC_NOTE",
    "BenchRecord",
    "Forward",
    "RuntimeModel",
    "Timing",
    "Validation",
    "check_count",
    "environment",
    "kept_signal_stack",
    "load_source",
    "mark_fastest",
    "markdown_table",
    "measure",
    "notes",
    "onnx_precision",
    "openvino_model",
    "run_benchmarks",
    "state_dict_mb",
    "table_rows",
]
