"""The graphs a detector file holds (the decoding, and with ``nms=True`` NMS too) and how they
are compared with PyTorch; [`mobilenets.tasks.detection.export`][mobilenets.tasks.detection.export]
writes them through the deploy pipeline.

The file takes ``input`` ``[N, 3, R, R]`` (normalized as the checkpoint's ``preprocessing``
metadata says). By default it returns, per default box,

- ``boxes`` ``[N, A, 4]``: decoded (x1, y1, x2, y2), normalized to [0, 1] (multiply by the
  image's width and height for pixels);
- ``scores`` ``[N, A, C]``: class probabilities, column 0 background (softmax, or for a
  focal-loss model the per-class sigmoids, see
  [`class_scores`][mobilenets.tasks.detection.inference.class_scores]).

and leaves NMS to the caller: keep (box, class) pairs above a score threshold and run class-wise
NMS (``torchvision.ops.batched_nms``, IoU 0.6, as [`postprocess`][mobilenets.core.boxes.postprocess]
does).

With ``nms=True`` ([`DetectionsWithNMS`][mobilenets.tasks.detection.graphs.DetectionsWithNMS])
the file does what [`postprocess`][mobilenets.core.boxes.postprocess] does and returns at most
K = ``max_detections`` detections per image, best first:

- ``boxes`` ``[N, K, 4]`` (x1, y1, x2, y2) normalized to [0, 1], ``scores`` ``[N, K]``,
  ``classes`` int64 ``[N, K]`` in 1..C-1;
- ``count`` int64 ``[N]``: how many rows of each image are detections; the rows after them are
  zeros.

How the graph matches ``postprocess``:

- scores are the softmax of [`score_logits`][mobilenets.tasks.detection.inference.score_logits],
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
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torchvision
from torch import nn

from mobilenets.core.boxes import decode, postprocess
from mobilenets.core.detector import SSDLite
from mobilenets.core.errors import MobileNetsError
from mobilenets.tasks.detection.inference import class_scores, score_logits

OUTPUT_NAMES = ("boxes", "scores")
NMS_OUTPUT_NAMES = ("boxes", "scores", "classes", "count")
TOLERANCE = 1e-4  # max abs difference of boxes and scores, the runtime against PyTorch


class HeadOutputs(nn.Module):
    """An SSDLite's outputs as a tuple ``(cls_logits, box_regression)``: the part of every file
    that int8 quantizes, and what the tails below read."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(images)
        return out["cls_logits"], out["box_regression"]


class Decoding(nn.Module):
    """Decoded boxes ``[N, A, 4]`` (clamped to [0, 1]) and class scores ``[N, A, C]`` from the
    head outputs: the float end of a file without NMS."""

    def __init__(self, anchors: torch.Tensor, loss: str = "softmax") -> None:
        super().__init__()
        self.loss = loss
        self.register_buffer("anchors", anchors.detach().clone())

    def forward(
        self, cls_logits: torch.Tensor, box_regression: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        boxes = decode(box_regression, self.anchors).clamp(0, 1)
        return boxes, class_scores(cls_logits, self.loss)


class NetworkWithTail(nn.Module):
    """A network whose outputs are ``(cls_logits, box_regression)``, then a ``tail`` that turns
    them into a file's outputs. The network is an SSDLite's
    [`HeadOutputs`][mobilenets.tasks.detection.graphs.HeadOutputs], or the int8 graph PT2E made
    of it; the tail stays float."""

    def __init__(self, network: nn.Module, tail: nn.Module) -> None:
        super().__init__()
        self.network, self.tail = network, tail

    def forward(self, images: torch.Tensor):
        return self.tail(*self.network(images))


class DecodedDetector(NetworkWithTail):
    """An SSDLite whose outputs are decoded boxes and class scores per default box."""

    def __init__(self, model: nn.Module, loss: str = "softmax") -> None:
        super().__init__(HeadOutputs(model), Decoding(model.anchors(), loss))


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
def class_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    max_per_class: int,
    iou_threshold: float,
    score_threshold: float,
) -> torch.Tensor:
    """ONNX NonMaxSuppression with a fixed-length output. ``boxes`` ``[N, A, 4]`` (x1, y1, x2,
    y2), ``scores`` ``[N, C, A]``: per image and class, the boxes scoring above
    ``score_threshold``, greedy NMS at ``iou_threshold``, the first ``max_per_class`` kept. Rows
    (image, class, box) int64, class by class, each class best first, then rows of -1 up to
    N * C * max_per_class."""
    rows = []
    for image in range(scores.shape[0]):
        for klass in range(scores.shape[1]):
            (candidates,) = torch.nonzero(scores[image, klass] > score_threshold, as_tuple=True)
            keep = torchvision.ops.nms(
                boxes[image, candidates], scores[image, klass, candidates], iou_threshold
            )[:max_per_class]
            found = candidates[keep]
            rows.append(
                torch.stack(
                    [torch.full_like(found, image), torch.full_like(found, klass), found], dim=1
                )
            )
    selected = torch.cat(rows) if rows else torch.zeros(0, 3, dtype=torch.long)
    padded = torch.full(
        (scores.shape[0] * scores.shape[1] * max_per_class, 3),
        -1,
        dtype=torch.long,
        device=boxes.device,
    )
    padded[: selected.shape[0]] = selected
    return padded


@class_nms.register_fake
def _(boxes, scores, max_per_class, iou_threshold, score_threshold):
    return boxes.new_empty((scores.shape[0] * scores.shape[1] * max_per_class, 3), dtype=torch.long)


def _class_nms_onnx(
    boxes, scores, max_per_class: int, iou_threshold: float, score_threshold: float
):
    """``mobilenets::class_nms`` in ONNX: NonMaxSuppression, then -1 rows up to the length of
    the PyTorch operator's output (the translation ``torch.onnx.export`` is given)."""
    from onnxscript import opset18 as op

    selected = op.NonMaxSuppression(
        boxes,
        scores,
        op.Constant(value_ints=[max_per_class]),
        op.Constant(value_floats=[iou_threshold]),
        op.Constant(value_floats=[score_threshold]),
        center_point_box=0,
    )
    images = op.Shape(scores, start=0, end=1)
    classes = op.Shape(scores, start=1, end=2)
    length = op.Mul(op.Mul(images, classes), op.Constant(value_ints=[max_per_class]))
    missing = op.Sub(length, op.Shape(selected, start=0, end=1))
    zero = op.Constant(value_ints=[0])
    pads = op.Concat(zero, zero, missing, zero, axis=0)  # (begin rows, begin cols, end ...)
    return op.Pad(selected, pads, op.Constant(value_int=-1))


class DecodingWithNMS(nn.Module):
    """The detections [`postprocess`][mobilenets.core.boxes.postprocess] gives (normalized
    boxes) from the head outputs: ``boxes`` ``[N, K, 4]``, ``scores`` ``[N, K]``, ``classes``
    ``[N, K]``, ``count`` ``[N]`` (see the module docstring); the float end of an ``nms=True``
    file."""

    def __init__(
        self, anchors: torch.Tensor, loss: str = "softmax", settings: NMSSettings = NMSSettings()
    ) -> None:
        super().__init__()
        self.loss, self.settings = loss, settings
        self.register_buffer("anchors", anchors.detach().clone())

    def forward(self, cls_logits: torch.Tensor, box_regression: torch.Tensor):
        settings = self.settings
        boxes = decode(box_regression.float(), self.anchors.float()).clamp(0, 1)
        scores = torch.softmax(score_logits(cls_logits.float(), self.loss), dim=-1)
        scores = scores[..., 1:]  # [N, A, C-1], object classes only
        batch, num_anchors, num_classes = scores.shape
        flat = scores.reshape(batch, num_anchors * num_classes)
        top, index = flat.topk(min(settings.pre_nms_top_k, flat.shape[1]), dim=1)
        kept = torch.zeros_like(flat).scatter(1, index, top).reshape(scores.shape)
        proper = (boxes[..., 2:] > boxes[..., :2]).all(dim=-1, keepdim=True)
        kept = torch.where(proper, kept, torch.zeros_like(kept))
        selected = class_nms(
            boxes,
            kept.transpose(1, 2).contiguous(),
            settings.max_detections,
            settings.nms_iou,
            settings.score_threshold,
        )
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
        return (detected_boxes, best * found, (klass[order] + 1) * found, found.sum(dim=1))


class DetectionsWithNMS(NetworkWithTail):
    """An SSDLite whose outputs are its final detections, as
    [`postprocess`][mobilenets.core.boxes.postprocess] gives them (normalized boxes): ``boxes``
    ``[N, K, 4]``, ``scores`` ``[N, K]``, ``classes`` ``[N, K]``, ``count`` ``[N]`` (see the
    module docstring)."""

    def __init__(
        self, model: nn.Module, loss: str = "softmax", settings: NMSSettings = NMSSettings()
    ) -> None:
        super().__init__(HeadOutputs(model), DecodingWithNMS(model.anchors(), loss, settings))


def reference_detections(
    model: SSDLite, loss: str, settings: NMSSettings, images: torch.Tensor, image_size=(1, 1)
) -> list[dict[str, torch.Tensor]]:
    """[`postprocess`][mobilenets.core.boxes.postprocess] of ``model`` (eval mode) on
    ``images`` with ``settings``, boxes normalized (or in pixels of ``image_size``, as
    postprocess takes it): what an ``nms=True`` file must return."""
    with torch.no_grad():
        out = model.eval()(images)
    return postprocess(
        score_logits(out["cls_logits"].float(), loss),
        out["box_regression"],
        model.anchors(),
        image_size=image_size,
        **asdict(settings),
    )


def compare_detections(
    ours: list[np.ndarray], expected: list[dict[str, torch.Tensor]], tolerance: float = TOLERANCE
) -> float:
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
            box_difference = np.abs(
                boxes[image, row].astype(np.float64) - want["boxes"][unused].numpy()
            ).max(axis=1)
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


def head_scales(converted: nn.Module) -> tuple[float, float]:
    """The quantization steps of a converted PT2E graph's two outputs, ``cls_logits`` and
    ``box_regression``: the scales of the dequantize ops they come from."""
    (output,) = (node for node in converted.graph.nodes if node.op == "output")
    leaves = []
    torch.fx.node.map_arg(output.args, leaves.append)
    if len(leaves) != 2 or not all(
        str(leaf.target).startswith("quantized_decomposed.dequantize_per_tensor") for leaf in leaves
    ):
        raise MobileNetsError("the head outputs of the int8 graph are not quantized")
    cls_scale, box_scale = (float(leaf.args[1]) for leaf in leaves)
    return cls_scale, box_scale


def head_steps(
    outputs,
    heads: tuple[torch.Tensor, torch.Tensor],
    anchors: torch.Tensor,
    loss: str,
    scales: tuple[float, float],
    limit: float,
) -> float:
    """How far an int8 program's decoded ``outputs`` (boxes, scores) are from its quantized
    reference, in quantization steps of the head outputs: the fewest s such that each of the
    program's values is within TOLERANCE of the range the float decoding gives when every one
    of the reference's ``heads`` (``cls_logits``, ``box_regression``) moves by up to s of its
    own steps (``scales``); math.inf beyond ``limit``.

    The decoding is monotone in each input, so the range has a closed form: x1 and y1 are
    lowest with the center moved back and the size grown, x2 and y2 with both moved back; a
    softmax score p is at most p e^(2d) / (p e^(2d) + 1 - p) when its logit gains d and the
    others lose d (sigmoid scores: their own logit +- d, the focal background 1 minus their
    sum); boxes are clamped to [0, 1] after. In float64, so that a score near 1 keeps its 1 - p.
    """
    boxes, scores = (torch.as_tensor(value).double() for value in outputs)
    cls_logits, box_regression = (head.double() for head in heads)
    anchors = anchors.double()
    if loss == "softmax":
        probabilities = torch.softmax(cls_logits, dim=-1)
    else:
        probabilities = torch.sigmoid(cls_logits[..., 1:])

    def within(steps: float) -> bool:
        move = steps * scales[1]
        grow = box_regression.new_tensor([-1.0, -1.0, 1.0, 1.0]) * move
        low = torch.cat(
            [
                decode(box_regression + grow, anchors)[..., :2],
                decode(box_regression - move, anchors)[..., 2:],
            ],
            dim=-1,
        )
        high = torch.cat(
            [
                decode(box_regression - grow, anchors)[..., :2],
                decode(box_regression + move, anchors)[..., 2:],
            ],
            dim=-1,
        )
        factor = math.exp((2 if loss == "softmax" else 1) * steps * scales[0])
        p, q = probabilities, 1 - probabilities
        least, most = p / (p + q * factor), p * factor / (p * factor + q)
        if loss != "softmax":  # the background column: 1 - the objects' sum, at least 0
            least, most = (
                torch.cat([(1 - most.sum(-1, keepdim=True)).clamp(min=0), least], dim=-1),
                torch.cat([(1 - least.sum(-1, keepdim=True)).clamp(min=0), most], dim=-1),
            )
        return all(
            bool(((value >= lower - TOLERANCE) & (value <= upper + TOLERANCE)).all())
            for value, lower, upper in (
                (boxes, low.clamp(0, 1), high.clamp(0, 1)),
                (scores, least, most),
            )
        )

    if not within(limit):
        return math.inf
    below, above = 0.0, float(limit)
    for _ in range(24):  # steps to within limit / 2**24
        middle = (below + above) / 2
        below, above = (below, middle) if within(middle) else (middle, above)
    return above


# what torch.onnx.export writes for our operators: NMS as ONNX NonMaxSuppression
ONNX_TRANSLATIONS = {torch.ops.mobilenets.class_nms.default: _class_nms_onnx}
