"""ONNX export of a trained detector, with the box decoding inside and NMS left outside.

The file takes ``input`` ``[N, 3, R, R]`` (normalized as the checkpoint's ``preprocessing``
metadata says) and returns, per default box,

- ``boxes`` ``[N, A, 4]``: decoded (x1, y1, x2, y2), normalized to [0, 1] (multiply by the
  image's width and height for pixels);
- ``scores`` ``[N, A, C]``: class probabilities, column 0 background (softmax, or for a
  focal-loss model the per-class sigmoids, see
  [`class_scores`][mobilenets.tasks.detection.evaluate.class_scores]).

NMS is not in the graph: keep (box, class) pairs above a score threshold and run class-wise NMS
(``torchvision.ops.batched_nms``, IoU 0.6, as [`postprocess`][mobilenets.core.boxes.postprocess]
does). Data-dependent output sizes would tie the file to one runtime's NonMaxSuppression
semantics; this way the file is plain tensors in, plain tensors out, and checked exactly.

BN is folded into the convs first
([`mobilenets.deploy.folding.fold_batch_norm`][mobilenets.deploy.folding.fold_batch_norm], by the
parts' names), and the written file is run with onnxruntime against the unfolded PyTorch model.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mobilenets.core.boxes import decode
from mobilenets.core.detector import SSDLite
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.extras import require
from mobilenets.core.files import atomic_path
from mobilenets.core.version import __version__
from mobilenets.deploy import onnx_export as export
from mobilenets.deploy.folding import fold_batch_norm
from mobilenets.engine.checkpoint import checkpoint_info
from mobilenets.tasks.detection.evaluate import class_scores
from mobilenets.tasks.detection.inference import DetectionCheckpoint

OUTPUT_NAMES = ("boxes", "scores")
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


def export_detector(checkpoint: DetectionCheckpoint, path: str | os.PathLike, *,
                    opset: int = export.DEFAULT_OPSET,
                    dynamic_batch: bool = False) -> DetectionExportReport:  # fmt: skip
    """Write the checkpoint's detector as ONNX (see the module docstring), check it with
    onnxruntime (batches 1 and 3 with ``dynamic_batch``, else 1; a difference above 1e-4
    raises and leaves no file) and record classes, category ids, preprocessing and the
    detection config in its metadata_props."""
    export.check_options(path, opset)  # the onnx extra too
    model = checkpoint.model.to("cpu", torch.float32)
    reference = DecodedDetector(copy.deepcopy(model).eval(), checkpoint.loss)
    folded, bn_folded = fold_batch_norm(model)
    graph = DecodedDetector(folded, checkpoint.loss).eval()
    config = model.config
    side = config.resolution
    batch = 2 if dynamic_batch else 1  # torch.export specialises a size-1 axis to 1
    example = torch.zeros(batch, config.backbone.in_chans, side, side)
    dynamic_shapes = ({0: torch.export.Dim(export.BATCH_AXIS)},) if dynamic_batch else None
    with torch.no_grad():
        program = torch.onnx.export(
            graph, (example,), dynamo=True, opset_version=opset,
            input_names=[export.INPUT_NAME], output_names=list(OUTPUT_NAMES),
            dynamic_shapes=dynamic_shapes, verbose=False,
        )  # fmt: skip
    info = checkpoint_info(
        checkpoint.classes, checkpoint.preprocessing, category_ids=list(checkpoint.category_ids),
        detection_config=config.to_dict(), scores=checkpoint.loss,
        outputs="boxes [N, A, 4] normalized x1 y1 x2 y2; scores [N, A, C], column 0 "
                "background; NMS not included",
        source=f"checkpoint {checkpoint.path.name}", mobilenets_version=__version__,
    )  # fmt: skip
    program.model.metadata_props.update(export.metadata_props(info))
    path = Path(path)
    with atomic_path(path) as temporary:
        program.save(temporary, external_data=False)
        written = export._read_model(temporary)
        shapes = [(b, config.backbone.in_chans, side, side) for b in ((1, 3) if dynamic_batch
                                                                      else (1,))]  # fmt: skip
        difference = verify_detector_onnx(temporary, reference, shapes)
        file_bytes = os.path.getsize(temporary)
    return DetectionExportReport(
        path, config.name, opset, export.graph_input_shape(written), model.anchors().shape[0],
        config.num_classes, file_bytes, difference, bn_folded,
        require("onnxruntime", "exporting to ONNX").__version__,
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
