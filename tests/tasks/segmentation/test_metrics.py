"""The segmentation confusion matrix: exact metrics, torchmetrics parity, whole-set accumulation,
absent classes and the errors a caller can cause."""

import json
import math

import pytest
import torch

from mobilenets.core.errors import MobileNetsError
from mobilenets.engine.device import Distributed
from mobilenets.tasks.segmentation.metrics import ConfusionMatrix

# One row of pixels; 255 is skipped. Class 3 appears nowhere (union 0).
TARGET = torch.tensor([[0, 0, 0, 1, 1, 2, 255]])
PREDICTION = torch.tensor([[0, 0, 1, 1, 2, 2, 3]])


def test_metrics_of_a_small_matrix_are_exact():
    confusion = ConfusionMatrix(4)
    confusion.update(PREDICTION, TARGET)
    assert confusion.matrix.tolist() == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    result = confusion.compute()
    # Ground truth 3, 2, 1 pixels; predicted 2, 2, 2; hits 2, 1, 1; unions 3, 3, 2.
    assert result["IoU"][:3].tolist() == [2 / 3, 1 / 3, 1 / 2]
    assert math.isnan(result["IoU"][3])  # class 3: union 0, no IoU, not in the mean
    assert result["mIoU"] == pytest.approx((2 / 3 + 1 / 3 + 1 / 2) / 3, rel=1e-15)
    assert result["pixel_accuracy"] == pytest.approx(4 / 6, rel=1e-15)
    assert result["mean_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3, rel=1e-15)
    assert result["fwIoU"] == pytest.approx(
        3 / 6 * 2 / 3 + 2 / 6 * 1 / 3 + 1 / 6 * 1 / 2, rel=1e-15
    )


def test_a_class_only_predicted_scores_iou_0_in_the_mean_but_no_accuracy():
    confusion = ConfusionMatrix(3)
    confusion.update(torch.tensor([[0, 2]]), torch.tensor([[0, 0]]))
    result = confusion.compute()
    assert result["IoU"].tolist()[0] == 0.5 and result["IoU"].tolist()[2] == 0.0
    assert math.isnan(result["IoU"][1])
    assert result["mIoU"] == 0.25  # (0.5 + 0.0) / 2: class 2 has union 1, class 1 none
    assert result["mean_accuracy"] == 0.5  # only class 0 is in the ground truth


def test_summary_is_plain_json_with_none_for_a_class_with_no_union():
    confusion = ConfusionMatrix(4)
    confusion.update(PREDICTION, TARGET)
    summary = confusion.summary(["background", "cat", "dog", "bird"])
    assert summary["IoU"][3] is None
    assert summary["classes"] == ["background", "cat", "dog", "bird"]
    assert summary["pixels"] == 6  # the 255 pixel is not counted
    assert json.loads(json.dumps(summary, allow_nan=False)) == summary
    assert confusion.summary()["classes"] == ["0", "1", "2", "3"]
    with pytest.raises(MobileNetsError, match="class_names has 2 names for 4 classes"):
        confusion.summary(["a", "b"])


def test_miou_and_per_class_iou_equal_torchmetrics_with_ignored_pixels_and_absent_classes():
    classification = pytest.importorskip("torchmetrics.classification")
    generator = torch.Generator().manual_seed(0)
    num_classes = 6
    jaccard_macro = classification.MulticlassJaccardIndex(num_classes, ignore_index=255)
    jaccard_each = classification.MulticlassJaccardIndex(
        num_classes, ignore_index=255, average=None
    )
    accuracy = classification.MulticlassAccuracy(num_classes, average="micro", ignore_index=255)
    confusion = ConfusionMatrix(num_classes)
    for batch in range(3):
        # Ground truth: classes 0-3; predictions: 0, 1, 2 and 4. So class 3 is only in the
        # ground truth, 4 only in the predictions, 5 nowhere (except at skipped pixels).
        target = torch.randint(0, 4, (2, 9, 11 + batch), generator=generator)
        prediction = torch.tensor([0, 1, 2, 4])[
            torch.randint(0, 4, target.shape, generator=generator)
        ]
        prediction[target == 0] = 0  # some hits, so that IoUs differ
        skipped = torch.rand(target.shape, generator=generator) < 0.1
        target[skipped] = 255
        prediction[skipped] = 5
        confusion.update(prediction, target)
        for metric in (jaccard_macro, jaccard_each, accuracy):
            metric.update(prediction, target)
    ours = confusion.compute()
    theirs = jaccard_each.compute().double()
    # torchmetrics 1.9: per class, union 0 gives 0.0 (zero_division); the macro mean leaves such
    # classes out (weight 0), as the mIoU here does.
    assert theirs[5] == 0.0 and math.isnan(ours["IoU"][5])
    assert theirs[3] == 0.0 and theirs[4] == 0.0
    assert torch.allclose(ours["IoU"][:5], theirs[:5], rtol=0, atol=1e-6)
    assert ours["mIoU"] == pytest.approx(jaccard_macro.compute().item(), abs=1e-6)
    assert ours["mIoU"] == pytest.approx(ours["IoU"][:5].mean().item(), rel=1e-15)
    assert ours["pixel_accuracy"] == pytest.approx(accuracy.compute().item(), abs=1e-6)


def test_iou_is_of_the_whole_set_not_a_mean_over_images():
    images = [  # (prediction, target): one image all right, one half wrong
        (torch.tensor([[0, 0, 0, 0]]), torch.tensor([[0, 0, 0, 0]])),
        (torch.tensor([[1, 1]]), torch.tensor([[0, 1]])),
    ]
    per_image = []
    whole = ConfusionMatrix(2)
    for prediction, target in images:
        alone = ConfusionMatrix(2)
        alone.update(prediction, target)
        per_image.append(alone.compute()["mIoU"])
        whole.update(prediction, target)
    assert per_image == [1.0, 0.25]  # (0 + 1/2) / 2 for the second image
    assert sum(per_image) / 2 == 0.625
    # Whole set: class 0 hits 4 of union 5, class 1 hits 1 of union 2.
    assert whole.compute()["IoU"].tolist() == [0.8, 0.5]
    assert whole.compute()["mIoU"] == pytest.approx(0.65, rel=1e-15)


def test_batches_add_up_to_the_same_matrix_and_uint8_masks_do_not_wrap():
    generator = torch.Generator().manual_seed(1)
    target = torch.randint(0, 21, (4, 16, 16), generator=generator, dtype=torch.uint8)
    target[:, :2] = 255
    prediction = torch.randint(0, 21, (4, 16, 16), generator=generator)
    at_once, in_parts = ConfusionMatrix(21), ConfusionMatrix(21)
    at_once.update(prediction, target)
    for index in range(4):
        in_parts.update(prediction[index], target[index])  # [H, W] images
    assert torch.equal(at_once.matrix, in_parts.matrix)
    assert at_once.pixels == 4 * 14 * 16
    # uint8 * 21 would wrap; counted as int64 the matrix is the plain pair count.
    expected = torch.zeros(21, 21, dtype=torch.int64)
    for t, p in zip(target.flatten().tolist(), prediction.flatten().tolist(), strict=True):
        if t != 255:
            expected[t, p] += 1
    assert torch.equal(at_once.matrix, expected)


def test_reduce_sums_the_matrix_over_the_processes(monkeypatch):
    confusion = ConfusionMatrix(4)
    confusion.update(PREDICTION, TARGET)
    before = confusion.matrix.clone()
    assert confusion.reduce(Distributed()) is confusion
    assert torch.equal(confusion.matrix, before)  # one process: nothing to add
    # Two processes that counted the same pixels: all_reduce doubles the matrix.
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda tensor: tensor.mul_(2))
    confusion.reduce(Distributed(rank=0, world_size=2))
    assert torch.equal(confusion.matrix, 2 * before)
    assert confusion.compute()["mIoU"] == pytest.approx(0.5, rel=1e-15)


def test_shape_mismatch_is_refused_naming_both_shapes():
    confusion = ConfusionMatrix(3)
    with pytest.raises(MobileNetsError, match=r"prediction \(2, 4, 4\) and target \(2, 4, 5\)"):
        confusion.update(
            torch.zeros(2, 4, 4, dtype=torch.long), torch.zeros(2, 4, 5, dtype=torch.long)
        )
    with pytest.raises(MobileNetsError, match=r"\[N, H, W\] or \[H, W\]"):
        confusion.update(torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long))


def test_labels_out_of_range_are_refused_naming_them():
    confusion = ConfusionMatrix(3)
    with pytest.raises(
        MobileNetsError, match=r"target has class indices \[-1, 7\], outside 0\.\.2"
    ):
        confusion.update(torch.zeros(1, 4, dtype=torch.long), torch.tensor([[0, 7, -1, 255]]))
    with pytest.raises(
        MobileNetsError, match=r"prediction has class indices \[3\], outside 0\.\.2"
    ):
        confusion.update(torch.tensor([[0, 3, 1]]), torch.tensor([[0, 1, 1]]))
    # A prediction at a skipped pixel is not scored, so not checked either.
    confusion.update(torch.tensor([[0, 9]]), torch.tensor([[0, 255]]))
    assert confusion.pixels == 1  # the failed updates counted nothing


def test_float_predictions_and_bad_num_classes_are_refused():
    with pytest.raises(
        MobileNetsError, match="prediction must hold integer class indices, got dtype torch.float32"
    ):
        ConfusionMatrix(3).update(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long))
    for bad in (0, 2.5, True):
        with pytest.raises(
            MobileNetsError, match=f"num_classes must be a positive integer, got {bad!r}"
        ):
            ConfusionMatrix(bad)


def test_nothing_counted_is_an_error_not_a_nan():
    confusion = ConfusionMatrix(3)
    confusion.update(torch.zeros(2, 2, dtype=torch.long), torch.full((2, 2), 255))
    with pytest.raises(MobileNetsError, match="no pixel was counted"):
        confusion.compute()
