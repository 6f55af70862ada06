"""SSD box coding, matching, post-processing and the MultiBox loss."""

import math

import pytest
import torch
from torch import nn
from torchvision.ops import box_convert

from mobilenets.core.boxes import (
    assign_batch,
    assign_targets,
    decode,
    encode,
    match,
    postprocess,
)
from mobilenets.core.errors import MobileNetsError
from mobilenets.tasks.detection.loss import MultiBoxLoss, hard_negatives

# Four quadrant anchors (cx, cy, w, h): xyxy (0, 0, .5, .5), (.5, 0, 1, .5), (0, .5, .5, 1),
# (.5, .5, 1, 1).
QUADRANTS = torch.tensor(
    [[0.25, 0.25, 0.5, 0.5], [0.75, 0.25, 0.5, 0.5], [0.25, 0.75, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5]]
)


def random_boxes(count: int, generator: torch.Generator) -> torch.Tensor:
    corner = torch.rand(count, 2, generator=generator) * 0.7
    size = 0.01 + torch.rand(count, 2, generator=generator) * 0.29
    return torch.cat([corner, corner + size], dim=1)


# --- Coding ---------------------------------------------------------------------------------


def test_encode_decode_round_trip():
    generator = torch.Generator().manual_seed(0)
    boxes = random_boxes(500, generator).double()
    anchors = box_convert(random_boxes(500, generator), "xyxy", "cxcywh").double()
    assert torch.allclose(decode(encode(boxes, anchors), anchors), boxes, atol=1e-5, rtol=0)
    batched = boxes.expand(3, -1, -1)
    assert torch.allclose(decode(encode(batched, anchors), anchors), batched, atol=1e-5, rtol=0)


def test_encode_uses_the_ssd_variances():
    anchor = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    # Centre (0.52, 0.46), size (0.4, 0.2): offsets 0.02/0.2/0.1, -0.04/0.4/0.1, ln 2/0.2, ln .5/.2
    box = torch.tensor([[0.32, 0.36, 0.72, 0.56]])
    expected = torch.tensor([[1.0, -1.0, math.log(2) * 5, math.log(0.5) * 5]])
    assert torch.allclose(encode(box, anchor), expected, atol=1e-5)
    same = encode(torch.tensor([[0.4, 0.3, 0.6, 0.7]]), anchor)  # the anchor itself
    assert torch.allclose(same, torch.zeros(1, 4), atol=1e-5)


def test_decode_clips_huge_size_offsets():
    decoded = decode(torch.tensor([[0.0, 0.0, 1e4, 1e4]]), torch.tensor([[0.5, 0.5, 0.1, 0.1]]))
    assert torch.isfinite(decoded).all()


# --- Matching -------------------------------------------------------------------------------


def test_match_forces_the_best_anchor_below_threshold():
    small = torch.tensor([[0.1, 0.1, 0.2, 0.2]])  # IoU 0.04 with the first quadrant
    assert match(QUADRANTS, small).tolist() == [0, -1, -1, -1]


def test_match_threshold_matches_every_anchor_above_it():
    whole_top = torch.tensor([[0.0, 0.0, 1.0, 0.5]])  # IoU 0.5 with both top quadrants
    assert match(QUADRANTS, whole_top).tolist() == [0, 0, -1, -1]
    # Above the threshold of both, only the forced best anchor (one of the two tied) remains.
    assert sorted(match(QUADRANTS, whole_top, iou_threshold=0.6).tolist()) == [-1, -1, -1, 0]


def test_match_threshold_boundary_is_inclusive():
    # Anchor 1 is the box itself (forced); anchor 0 overlaps it at IoU exactly 0.5.
    anchors = torch.tensor([[0.25, 0.25, 0.5, 0.5], [0.25, 0.125, 0.5, 0.25]])
    box = torch.tensor([[0.0, 0.0, 0.5, 0.25]])
    assert match(anchors, box, iou_threshold=0.5).tolist() == [0, 0]
    assert match(anchors, box, iou_threshold=0.5001).tolist() == [-1, 0]


def test_match_two_boxes_competing_for_one_anchor_both_get_one():
    first = [0.0, 0.0, 0.5, 0.5]  # IoU 1.0 with anchor 0
    second = [0.05, 0.0, 0.55, 0.5]  # IoU 0.82 with anchor 0, 0.05 with anchor 1
    matched = match(QUADRANTS, torch.tensor([first, second]))
    assert matched.tolist() == [0, 1, -1, -1]
    # The order of the boxes does not change who gets what.
    assert match(QUADRANTS, torch.tensor([second, first])).tolist() == [1, 0, -1, -1]


def test_match_without_boxes_is_all_background():
    assert match(QUADRANTS, torch.zeros(0, 4)).tolist() == [-1, -1, -1, -1]


def test_match_rejects_bad_inputs():
    with pytest.raises(MobileNetsError, match="iou_threshold"):
        match(QUADRANTS, torch.zeros(0, 4), iou_threshold=0.0)
    with pytest.raises(MobileNetsError, match=r"gt_boxes must have shape \[K, 4\]"):
        match(QUADRANTS, torch.zeros(4))


def test_assign_targets_labels_and_offsets():
    boxes = torch.tensor([[0.0, 0.0, 1.0, 0.5], [0.6, 0.6, 0.9, 0.9]])
    labels, offsets = assign_targets(QUADRANTS, boxes, torch.tensor([3, 1]))
    assert labels.tolist() == [3, 3, 0, 1]
    assert torch.equal(offsets[2], torch.zeros(4))
    positive = labels > 0
    decoded = decode(offsets[positive], QUADRANTS[positive])
    assert torch.allclose(decoded, boxes[[0, 0, 1]], atol=1e-6)


def test_assign_targets_rejects_background_labels_and_empty_boxes():
    box = torch.tensor([[0.1, 0.1, 0.4, 0.4]])
    with pytest.raises(MobileNetsError, match="labels must be >= 1"):
        assign_targets(QUADRANTS, box, torch.tensor([0]))
    with pytest.raises(MobileNetsError, match="x1 < x2"):
        assign_targets(QUADRANTS, torch.tensor([[0.4, 0.1, 0.4, 0.4]]), torch.tensor([1]))
    with pytest.raises(MobileNetsError, match="one label per box"):
        assign_targets(QUADRANTS, box, torch.tensor([1, 2]))


def test_assign_batch_stacks_images():
    targets = [
        {"boxes": torch.tensor([[0.1, 0.1, 0.2, 0.2]]), "labels": torch.tensor([2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    labels, offsets = assign_batch(QUADRANTS, targets)
    assert labels.tolist() == [[2, 0, 0, 0], [0, 0, 0, 0]]
    assert offsets.shape == (2, 4, 4)


# --- Post-processing --------------------------------------------------------------------------


def test_postprocess_class_wise_nms_top_k_and_pixels():
    anchors = torch.tensor(
        [[0.3, 0.3, 0.2, 0.2], [0.31, 0.3, 0.2, 0.2], [0.3, 0.3, 0.2, 0.2], [0.8, 0.8, 0.1, 0.1]]
    )
    logits = torch.full((1, 4, 3), -10.0)
    logits[0, 0, 1] = 10.0  # class 1, best
    logits[0, 1, 1] = 9.0  # class 1, overlaps anchor 0: suppressed
    logits[0, 2, 2] = 8.0  # class 2 on the same spot: kept (NMS is per class)
    logits[0, 3, 0] = 10.0  # background
    out = postprocess(
        logits,
        torch.zeros(1, 4, 4),
        anchors,
        score_threshold=0.5,
        nms_iou=0.5,
        image_size=(100, 200),
    )
    (found,) = out
    assert found["labels"].tolist() == [1, 2]
    assert (found["scores"][:-1] >= found["scores"][1:]).all()
    expected = torch.tensor([[0.2 * 200, 0.2 * 100, 0.4 * 200, 0.4 * 100]] * 2)
    assert torch.allclose(found["boxes"], expected, atol=1e-4)
    top1 = postprocess(logits, torch.zeros(1, 4, 4), anchors, max_detections=1)
    assert top1[0]["labels"].tolist() == [1]


def test_postprocess_per_image_sizes_and_shape_errors():
    logits, regression = torch.zeros(2, 4, 3), torch.zeros(2, 4, 4)
    out = postprocess(
        logits, regression, QUADRANTS, score_threshold=0.2, image_size=[(10, 10), (20, 40)]
    )
    assert [len(o["boxes"]) for o in out] == [8, 8]  # 4 anchors x 2 classes, no overlap
    assert out[1]["boxes"].max() == 40
    with pytest.raises(MobileNetsError, match="anchors must have shape"):
        postprocess(logits, regression, QUADRANTS[:3])
    with pytest.raises(MobileNetsError, match="2 sizes for a batch of 1"):
        postprocess(logits[:1], regression[:1], QUADRANTS, image_size=[(1, 1), (1, 1)])


# --- Loss -----------------------------------------------------------------------------------


def test_hard_negative_mining_takes_three_per_positive_highest_loss_first():
    labels = torch.tensor([[1, 0, 0, 0, 2, 0, 0, 0, 0, 0]])
    loss = torch.tensor([[9.0, 0.1, 0.5, 0.2, 9.0, 0.9, 0.3, 0.8, 0.7, 0.6]])
    negative = hard_negatives(loss, labels, 3.0)
    assert negative.sum() == 6
    assert negative[0].nonzero().flatten().tolist() == [2, 5, 6, 7, 8, 9]


def test_hard_negative_mining_edge_cases():
    empty_image = torch.zeros(1, 10, dtype=torch.long)
    loss = torch.arange(10.0)[None]
    # An image without objects is mined as if it had one.
    assert hard_negatives(loss, empty_image, 3.0)[0].nonzero().flatten().tolist() == [7, 8, 9]
    crowded = torch.tensor([[1, 1, 0, 0, 1]])
    assert hard_negatives(torch.ones(1, 5), crowded, 3.0).tolist() == [
        [False, False, True, True, False]
    ]


def test_softmax_loss_values():
    labels = torch.tensor([[1, 0, 0, 0, 0, 0, 0, 0], [0, 0, 2, 0, 0, 0, 0, 0]])
    targets = torch.randn(2, 8, 4)
    # Uniform logits: every counted anchor costs ln C; 2 positives and 6 negatives, over 2.
    loss = MultiBoxLoss()(torch.zeros(2, 8, 3), targets.clone(), labels, targets)
    assert loss.num_positives == 2
    assert loss.box.item() == 0
    assert loss.cls.item() == pytest.approx(8 * math.log(3) / 2, rel=1e-6)
    assert loss.total.item() == pytest.approx(loss.cls.item())
    # Confident and right: near zero; the box loss is smooth L1 over positives.
    confident = nn.functional.one_hot(labels, 3).float() * 40
    regression = targets.clone()
    regression[0, 0] += 0.5  # |d| < 1 in each of 4 coordinates: 4 * 0.5 * 0.25 = 0.5
    loss = MultiBoxLoss()(confident, regression, labels, targets)
    assert loss.cls.item() < 1e-6
    assert loss.box.item() == pytest.approx(0.5 / 2)


def test_focal_loss_is_finite_and_small_when_confident():
    labels = torch.tensor([[1, 0, 0, 2]])
    targets = torch.zeros(1, 4, 4)
    focal = MultiBoxLoss(classification="focal")
    loss = focal(torch.zeros(1, 4, 3), targets, labels, targets)
    assert torch.isfinite(loss.total) and loss.cls > 0
    confident = torch.where(nn.functional.one_hot(labels, 3).bool(), 20.0, -20.0)
    assert focal(confident, targets, labels, targets).cls < 1e-6


def test_loss_rejects_bad_settings_and_labels():
    with pytest.raises(MobileNetsError, match="classification must be one of softmax, focal"):
        MultiBoxLoss(classification="hinge")
    with pytest.raises(MobileNetsError, match="labels must be in 0..2"):
        MultiBoxLoss()(
            torch.zeros(1, 2, 3), torch.zeros(1, 2, 4), torch.tensor([[0, 3]]), torch.zeros(1, 2, 4)
        )


# --- A few steps of training lower the loss ---------------------------------------------------


class TinyDetector(nn.Module):
    """Three stride-2 convs to an 8x8 grid and a 3x3 head: two anchors per cell."""

    def __init__(self, num_classes: int, anchors_per_cell: int) -> None:
        super().__init__()
        self.num_classes, self.anchors_per_cell = num_classes, anchors_per_cell
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, 2, 1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, 2, 1),
            nn.ReLU(),
        )
        self.head = nn.Conv2d(32, anchors_per_cell * (num_classes + 4), 3, 1, 1)

    def forward(self, images):
        out = self.head(self.body(images))  # [N, K * (C + 4), 8, 8]
        n, _, h, w = out.shape
        out = out.view(n, self.anchors_per_cell, self.num_classes + 4, h, w)
        out = out.permute(0, 3, 4, 1, 2).reshape(n, h * w * self.anchors_per_cell, -1)
        return out[..., : self.num_classes], out[..., self.num_classes :]


def grid_anchors(cells: int, sizes: tuple[float, ...]) -> torch.Tensor:
    """Anchors in (row, column, size) order, the head's order."""
    centers = (torch.arange(cells) + 0.5) / cells
    cy, cx, size = torch.meshgrid(centers, centers, torch.tensor(sizes), indexing="ij")
    return torch.stack([cx, cy, size, size], dim=-1).reshape(-1, 4)


@pytest.mark.parametrize("classification", ["softmax", "focal"])
def test_a_few_steps_of_training_lower_the_loss(tmp_path, one_thread, classification):
    from mobilenets.core.preprocessing import Preprocessing
    from mobilenets.data.detection import CocoDetection, collate_detections
    from mobilenets.data.detection_transforms import eval_transform
    from mobilenets.data.shapes import make_synthetic_coco

    splits = make_synthetic_coco(tmp_path, num_train=4, num_val=0, image_size=64, seed=3)
    preprocessing = Preprocessing(64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    dataset = CocoDetection(*splits["train"], transform=eval_transform(preprocessing))
    images, targets = collate_detections([dataset[i] for i in range(4)])
    anchors = grid_anchors(8, (0.2, 0.4))
    labels, box_targets = assign_batch(anchors, targets)

    torch.manual_seed(0)
    model = TinyDetector(dataset.num_classes, anchors_per_cell=2)
    criterion = MultiBoxLoss(classification=classification)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = criterion(*model(images), labels, box_targets)
        optimizer.zero_grad()
        loss.total.backward()
        optimizer.step()
        losses.append(loss.total.item())
    assert all(math.isfinite(value) for value in losses)
    assert losses[-1] < 0.5 * losses[0], losses
