"""Turning a detector's outputs into detections: the class scores of each training loss."""

import pytest
import torch

from mobilenets.tasks.detection.inference import class_scores, score_logits


def test_focal_scores_are_sigmoids_and_postprocess_sees_them():
    logits = torch.tensor([[[5.0, -2.0, 0.0, 1.0], [0.0, -9.0, -9.0, -9.0]]])
    scores = class_scores(logits, "focal")
    assert torch.allclose(scores[..., 1:], torch.sigmoid(logits[..., 1:]))
    assert scores[0, 1, 0] == pytest.approx(1 - 3 * torch.sigmoid(torch.tensor(-9.0)).item())
    # Where the object scores sum to at most 1, softmax of score_logits gives them back.
    recovered = torch.softmax(score_logits(logits, "focal"), -1)
    assert torch.allclose(recovered[0, 1], scores[0, 1], atol=1e-6)
    assert torch.equal(score_logits(logits, "softmax"), logits)
