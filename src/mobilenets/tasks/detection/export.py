"""ONNX export of a trained detector: box decoding inside, and with ``nms=True`` NMS too.

The file takes ``input`` ``[N, 3, R, R]`` (normalized as the checkpoint's ``preprocessing``
metadata says). By default it returns, per default box,

- ``boxes`` ``[N, A, 4]``: decoded (x1, y1, x2, y2), normalized to [0, 1] (multiply by the
  image's width and height for pixels);
- ``scores`` ``[N, A, C]``: class probabilities, column 0 background (softmax, or for a
  focal-loss model the per-class sigmoids, see
  [`class_scores`][mobilenets.tasks.detection.evaluate.class_scores]).

and leaves NMS to the caller: keep (box, class) pairs above a score threshold and run class-wise
NMS (``torchvision.ops.batched_nms``, IoU 0.6, as [`postprocess`][mobilenets.core.boxes.postprocess]
does).

With ``nms=True`` ([`DetectionsWithNMS`][mobilenets.tasks.detection.export.DetectionsWithNMS])
the file does what [`postprocess`][mobilenets.core.boxes.postprocess] does and returns at most
K = ``max_detections`` detections per image, best first:

- ``boxes`` ``[N, K, 4]`` (x1, y1, x2, y2) normalized to [0, 1], ``scores`` ``[N, K]``,
  ``classes`` int64 ``[N, K]`` in 1..C-1;
- ``count`` int64 ``[N]``: how many rows of each image are detections; the rows after them are
  zeros.

How the graph matches ``postprocess``:

- scores are the softmax of [`score_logits`][mobilenets.tasks.detection.evaluate.score_logits],
  as evaluation feeds ``postprocess``; the ``pre_nms_top_k`` best (anchor, class) scores are
  kept and every other score is set to 0 (a score must be above ``score_threshold`` >= 0 to
  count, in both), then anchors whose clamped box has no area are zeroed, after the top-k as
  there;
- NMS is ONNX ``NonMaxSuppression``, which is per class, as ``batched_nms``: boxes
  ``[N, A, 4]``, scores ``[N, C-1, A]``, ``center_point_box=0``. That mode reads corners as
  (y1, x1, y2, x2), but it takes min and max of each pair and IoU is symmetric in x and y, so
  (x1, y1, x2, y2) gives the same overlaps. onnxruntime, like torchvision, suppresses a box when
  its IoU is *above* the threshold (equal is kept), keeps scores *above* ``score_threshold``,
  and among equal scores takes the lower anchor index first, which is the order of
  ``postprocess``'s candidates. Each class keeps at most ``max_detections`` (greedy NMS picks
  best first, so the first K of a class are the same whatever the cap past K);
- the selections of all classes are ranked by score with one TopK per image (K best).

NonMaxSuppression's output has a data-dependent length, which torch.export cannot trace
through the rest of the graph; so the graph calls our operator ``mobilenets::class_nms``
(PyTorch implementation: torchvision's ``nms`` per class), whose output has the fixed length
N * (C-1) * K, padded with rows of -1, and ``torch.onnx.export``'s ``custom_translation_table``
maps it to ``NonMaxSuppression`` followed by a ``Pad`` to that length.

Where the two can differ: ``batched_nms`` shifts each class's boxes by ``class * (max
coordinate + 1)`` in float32 before one NMS, which moves their coordinates by up to ~1e-5 with
90 classes and can flip a pair whose IoU is that close to the threshold; exactly equal scores
of different (anchor, class) pairs come out of the final TopK class by class, and equal scores
at the pre-NMS top-k's cut may be picked differently. The export check therefore matches
detections by class, box and score (1e-4), not by position.

BN is folded into the convs first
([`mobilenets.deploy.folding.fold_batch_norm`][mobilenets.deploy.folding.fold_batch_norm], by the
parts' names), and the written file is run with onnxruntime against the unfolded PyTorch model
(``postprocess`` with the same settings, for ``nms=True``); a disagreement leaves no file.
"""

from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn

from mobilenets.core.boxes import decode, postprocess
from mobilenets.core.detector import SSDLite
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.extras import require
from mobilenets.core.files import atomic_path
from mobilenets.core.version import __version__
from mobilenets.deploy import onnx_export as export
from mobilenets.deploy.folding import fold_batch_norm
from mobilenets.engine.checkpoint import checkpoint_info
from mobilenets.tasks.detection.evaluate import class_scores, score_logits
from mobilenets.tasks.detection.inference import DetectionCheckpoint

OUTPUT_NAMES = ("boxes", "scores")
NMS_OUTPUT_NAMES = ("boxes", "scores", "classes", "count")
TOLERANCE = 1e-4  # max abs difference of boxes and scores, onnxruntime against PyTorch


class DecodedDetector(nn.Module):
    """An SSDLite whose outputs are decoded boxes and class scores per default box."""

    def __init__(self, model: SSDLite, loss: str = "softmax") -> None:
        super().__init__()
        self.model, self.loss = model, loss
        self.register_buffer("anchors", model.anchors().detach().clone())

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(images)
        boxes = decode(out["box_regression"], self.anchors).clamp(0, 1)
        return boxes, class_scores(out["cls_logits"], self.loss)


# --- NMS in the graph ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NMSSettings:
    """What [`postprocess`][mobilenets.core.boxes.postprocess] takes, with its defaults."""

    score_threshold: float = 0.01
    nms_iou: float = 0.6
    max_detections: int = 100
    pre_nms_top_k: int = 1000

    def __post_init__(self) -> None:
        def whole(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and value >= 1

        if not 0 <= self.score_threshold < 1:
            raise MobileNetsError(
                f"score_threshold must be in [0, 1), got {self.score_threshold!r}"
            )
        if not 0 < self.nms_iou <= 1:
            raise MobileNetsError(f"nms_iou must be in (0, 1], got {self.nms_iou!r}")
        for name in ("max_detections", "pre_nms_top_k"):
            if not whole(getattr(self, name)):
                raise MobileNetsError(
                    f"{name} must be an integer >= 1, got {getattr(self, name)!r}"
                )


@torch.library.custom_op("mobilenets::class_nms", mutates_args=())
def class_nms(boxes: torch.Tensor, scores: torch.Tensor, max_per_class: int,
              iou_threshold: float, score_threshold: float) -> torch.Tensor:  # fmt: skip
    """ONNX NonMaxSuppression with a fixed-length output. ``boxes`` ``[N, A, 4]`` (x1, y1, x2,
    y2), ``scores`` ``[N, C, A]``: per image and class, the boxes scoring above
    ``score_threshold``, greedy NMS at ``iou_threshold``, the first ``max_per_class`` kept. Rows
    (image, class, box) int64, class by class, each class best first, then rows of -1 up to
    N * C * max_per_class."""
    rows = []
    for image in range(scores.shape[0]):
        for klass in range(scores.shape[1]):
            (candidates,) = torch.nonzero(scores[image, klass] > score_threshold, as_tuple=True)
            keep = torchvision.ops.nms(boxes[image, candidates], scores[image, klass, candidates],
                                       iou_threshold)[:max_per_class]  # fmt: skip
            found = candidates[keep]
            rows.append(torch.stack([torch.full_like(found, image), torch.full_like(found, klass),
                                     found], dim=1))  # fmt: skip
    selected = torch.cat(rows) if rows else torch.zeros(0, 3, dtype=torch.long)
    padded = torch.full((scores.shape[0] * scores.shape[1] * max_per_class, 3), -1,
                        dtype=torch.long, device=boxes.device)  # fmt: skip
    padded[: selected.shape[0]] = selected
    return padded


@class_nms.register_fake
def _(boxes, scores, max_per_class, iou_threshold, score_threshold):
    return boxes.new_empty((scores.shape[0] * scores.shape[1] * max_per_class, 3),
                           dtype=torch.long)  # fmt: skip


def _class_nms_onnx(boxes, scores, max_per_class: int, iou_threshold: float,
                    score_threshold: float):  # fmt: skip
    """``mobilenets::class_nms`` in ONNX: NonMaxSuppression, then -1 rows up to the length of
    the PyTorch operator's output (the translation ``torch.onnx.export`` is given)."""
    from onnxscript import opset18 as op

    selected = op.NonMaxSuppression(
        boxes, scores, op.Constant(value_ints=[max_per_class]),
        op.Constant(value_floats=[iou_threshold]), op.Constant(value_floats=[score_threshold]),
        center_point_box=0,
    )  # fmt: skip
    images = op.Shape(scores, start=0, end=1)
    classes = op.Shape(scores, start=1, end=2)
    length = op.Mul(op.Mul(images, classes), op.Constant(value_ints=[max_per_class]))
    missing = op.Sub(length, op.Shape(selected, start=0, end=1))
    zero = op.Constant(value_ints=[0])
    pads = op.Concat(zero, zero, missing, zero, axis=0)  # (begin rows, begin cols, end ...)
    return op.Pad(selected, pads, op.Constant(value_int=-1))


class DetectionsWithNMS(nn.Module):
    """An SSDLite whose outputs are its final detections, as
    [`postprocess`][mobilenets.core.boxes.postprocess] gives them (normalized boxes): ``boxes``
    ``[N, K, 4]``, ``scores`` ``[N, K]``, ``classes`` ``[N, K]``, ``count`` ``[N]`` (see the
    module docstring)."""

    def __init__(self, model: SSDLite, loss: str = "softmax",
                 settings: NMSSettings = NMSSettings()) -> None:  # fmt: skip
        super().__init__()
        self.model, self.loss, self.settings = model, loss, settings
        self.register_buffer("anchors", model.anchors().detach().clone())

    def forward(self, images: torch.Tensor):
        settings = self.settings
        out = self.model(images)
        boxes = decode(out["box_regression"].float(), self.anchors.float()).clamp(0, 1)
        scores = torch.softmax(score_logits(out["cls_logits"].float(), self.loss), dim=-1)
        scores = scores[..., 1:]  # [N, A, C-1], object classes only
        batch, num_anchors, num_classes = scores.shape
        flat = scores.reshape(batch, num_anchors * num_classes)
        top, index = flat.topk(min(settings.pre_nms_top_k, flat.shape[1]), dim=1)
        kept = torch.zeros_like(flat).scatter(1, index, top).reshape(scores.shape)
        proper = (boxes[..., 2:] > boxes[..., :2]).all(dim=-1, keepdim=True)
        kept = torch.where(proper, kept, torch.zeros_like(kept))
        selected = class_nms(boxes, kept.transpose(1, 2).contiguous(), settings.max_detections,
                             settings.nms_iou, settings.score_threshold)  # fmt: skip
        valid = selected[:, 0] >= 0
        image, klass, anchor = selected.clamp(min=0).unbind(dim=1)
        owned = (image == torch.arange(batch, device=image.device)[:, None]) & valid  # [N, M]
        ranked = torch.where(
            owned, kept[image, anchor, klass], torch.full_like(owned, -1.0, dtype=kept.dtype)
        )
        best, order = ranked.topk(settings.max_detections, dim=1)  # [N, K]
        found = owned.gather(1, order)
        rows = torch.arange(batch, device=image.device)[:, None]
        detected_boxes = boxes[rows, anchor[order]] * found[..., None]
        return (detected_boxes, best * found, (klass[order] + 1) * found,
                found.sum(dim=1))  # fmt: skip


# --- Export -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DetectionExportReport:
    path: Path
    model_name: str
    opset: int
    input_shape: tuple[int | str, ...]
    num_boxes: int
    num_classes: int
    file_bytes: int
    max_abs_diff: float  # onnxruntime vs PyTorch, boxes and scores, over the checked batches
    bn_folded: int
    onnxruntime_version: str
    nms: NMSSettings | None = None  # the NMS in the graph, None when it is left outside


def export_detector(checkpoint: DetectionCheckpoint, path: str | os.PathLike, *,
                    opset: int = export.DEFAULT_OPSET, dynamic_batch: bool = False,
                    nms: bool = False, score_threshold: float = 0.01, nms_iou: float = 0.6,
                    max_detections: int = 100,
                    pre_nms_top_k: int = 1000) -> DetectionExportReport:  # fmt: skip
    """Write the checkpoint's detector as ONNX (see the module docstring), check it with
    onnxruntime (batches 1 and 3 with ``dynamic_batch``, else 1; a difference above 1e-4
    raises and leaves no file) and record classes, category ids, preprocessing and the
    detection config in its metadata_props.

    ``nms=True`` puts the score threshold, class-wise NMS and the top ``max_detections`` in the
    graph; ``score_threshold``, ``nms_iou``, ``max_detections`` and ``pre_nms_top_k`` are
    [`postprocess`][mobilenets.core.boxes.postprocess]'s, with its defaults, and apply only
    then."""
    export.check_options(path, opset)  # the onnx extra too
    settings = NMSSettings(score_threshold, nms_iou, max_detections, pre_nms_top_k)
    model = checkpoint.model.to("cpu", torch.float32)
    folded, bn_folded = fold_batch_norm(model)
    if nms:
        graph = DetectionsWithNMS(folded, checkpoint.loss, settings).eval()
        output_names = NMS_OUTPUT_NAMES
        translations = {torch.ops.mobilenets.class_nms.default: _class_nms_onnx}
        outputs = (
            f"boxes [N, {max_detections}, 4] normalized x1 y1 x2 y2; scores [N, {max_detections}]"
            f"; classes [N, {max_detections}] int64 in 1..C-1; count [N] int64, detections per "
            "image (rows past it are zeros); NMS included"
        )
    else:
        graph = DecodedDetector(folded, checkpoint.loss).eval()
        output_names, translations = OUTPUT_NAMES, None
        outputs = ("boxes [N, A, 4] normalized x1 y1 x2 y2; scores [N, A, C], column 0 "
                   "background; NMS not included")  # fmt: skip
    config = model.config
    side = config.resolution
    batch = 2 if dynamic_batch else 1  # torch.export specialises a size-1 axis to 1
    example = torch.zeros(batch, config.backbone.in_chans, side, side)
    dynamic_shapes = ({0: torch.export.Dim(export.BATCH_AXIS)},) if dynamic_batch else None
    with torch.no_grad():
        program = torch.onnx.export(
            graph, (example,), dynamo=True, opset_version=opset,
            input_names=[export.INPUT_NAME], output_names=list(output_names),
            dynamic_shapes=dynamic_shapes, custom_translation_table=translations, verbose=False,
        )  # fmt: skip
    info = checkpoint_info(
        checkpoint.classes, checkpoint.preprocessing, category_ids=list(checkpoint.category_ids),
        detection_config=config.to_dict(), scores=checkpoint.loss, outputs=outputs,
        nms=asdict(settings) if nms else None,
        source=f"checkpoint {checkpoint.path.name}", mobilenets_version=__version__,
    )  # fmt: skip
    program.model.metadata_props.update(export.metadata_props(info))
    path = Path(path)
    with atomic_path(path) as temporary:
        program.save(temporary, external_data=False)
        written = export._read_model(temporary)
        shapes = [(b, config.backbone.in_chans, side, side) for b in ((1, 3) if dynamic_batch
                                                                      else (1,))]  # fmt: skip
        reference = copy.deepcopy(model).eval()
        if nms:
            difference = verify_nms_onnx(temporary, reference, checkpoint.loss, settings, shapes)
        else:
            difference = verify_detector_onnx(
                temporary, DecodedDetector(reference, checkpoint.loss), shapes
            )
        file_bytes = os.path.getsize(temporary)
    return DetectionExportReport(
        path, config.name, opset, export.graph_input_shape(written), model.anchors().shape[0],
        config.num_classes, file_bytes, difference, bn_folded,
        require("onnxruntime", "exporting to ONNX").__version__, settings if nms else None,
    )  # fmt: skip


def verify_detector_onnx(path: str | os.PathLike, reference: nn.Module,
                         shapes: list[tuple[int, ...]]) -> float:  # fmt: skip
    """The max abs difference of onnxruntime's boxes and scores and ``reference``'s on the
    same random inputs; raises when it exceeds TOLERANCE."""
    session = export.onnx_session(path)
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for shape in shapes:
        x = torch.randn(shape, generator=generator)
        ours = session.run(list(OUTPUT_NAMES), {export.INPUT_NAME: x.numpy()})
        with torch.no_grad():
            expected = reference(x)
        for name, got, want in zip(OUTPUT_NAMES, ours, expected, strict=True):
            difference = float(np.abs(got.astype(np.float64) - want.numpy()).max())
            if not difference <= TOLERANCE:  # catches NaN too
                raise MobileNetsError(
                    f"the ONNX model's {name} disagree with PyTorch: max abs difference "
                    f"{difference:.3g} at input {export.format_shape(shape)} (allowed "
                    f"{TOLERANCE:g})"
                )
            worst = max(worst, difference)
    return worst


def reference_detections(model: SSDLite, loss: str, settings: NMSSettings,
                         images: torch.Tensor) -> list[dict[str, torch.Tensor]]:  # fmt: skip
    """[`postprocess`][mobilenets.core.boxes.postprocess] of ``model`` (eval mode) on
    ``images`` with ``settings``, boxes normalized: what an ``nms=True`` file must return."""
    with torch.no_grad():
        out = model.eval()(images)
    return postprocess(score_logits(out["cls_logits"].float(), loss), out["box_regression"],
                       model.anchors(), **asdict(settings))  # fmt: skip


def compare_detections(ours: list[np.ndarray], expected: list[dict[str, torch.Tensor]],
                       tolerance: float = TOLERANCE) -> float:  # fmt: skip
    """The max abs difference of an ``nms=True`` file's outputs ``(boxes, scores, classes,
    count)`` and ``expected`` (postprocess's detections), each detection matched by class, box
    and score within ``tolerance`` (in any order: near-equal scores may swap); raises naming
    the first image that disagrees."""
    boxes, scores, classes, count = ours
    worst = 0.0
    for image, want in enumerate(expected):
        found = int(count[image])
        problem = None
        if found != len(want["scores"]):
            problem = f"{found} detections where PyTorch has {len(want['scores'])}"
        elif (
            np.any(boxes[image, found:])
            or np.any(scores[image, found:])
            or np.any(classes[image, found:])
        ):
            problem = "non-zero rows after its count"
        elif np.any(np.diff(scores[image, :found]) > 0):
            problem = "scores out of order"
        unused = list(range(found))
        for row in range(found) if problem is None else ():
            box_difference = np.abs(boxes[image, row].astype(np.float64)
                                    - want["boxes"][unused].numpy()).max(axis=1)  # fmt: skip
            score_difference = np.abs(float(scores[image, row]) - want["scores"][unused].numpy())
            same = (want["labels"][unused].numpy() == classes[image, row]) & (
                np.maximum(box_difference, score_difference) <= tolerance
            )
            if not same.any():
                problem = f"detection {row} has no counterpart in PyTorch's within {tolerance:g}"
                break
            match = int(np.flatnonzero(same)[0])
            worst = max(worst, float(box_difference[match]), float(score_difference[match]))
            unused.pop(match)
        if problem is not None:
            raise MobileNetsError(
                f"the ONNX model's detections disagree with PyTorch's postprocess on image "
                f"{image}: {problem}"
            )
    return worst


def verify_nms_onnx(path: str | os.PathLike, reference: SSDLite, loss: str,
                    settings: NMSSettings, shapes: list[tuple[int, ...]]) -> float:  # fmt: skip
    """The max abs difference of an ``nms=True`` file's detections and ``postprocess``'s on
    ``reference`` (see compare_detections) on the same random inputs; raises when they
    disagree."""
    session = export.onnx_session(path)
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for shape in shapes:
        x = torch.randn(shape, generator=generator)
        ours = session.run(list(NMS_OUTPUT_NAMES), {export.INPUT_NAME: x.numpy()})
        expected = reference_detections(reference, loss, settings, x)
        worst = max(worst, compare_detections(ours, expected))
    return worst
