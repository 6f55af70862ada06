"""Classification evaluation: top-1, top-5, the confusion matrix, flip test-time augmentation."""

import pytest
import torch

from mobilenets.core.errors import MobileNetsError
from mobilenets.engine.evaluate import evaluate


class LeftRightHalves(torch.nn.Module):
    """Three classes scored from where an image is bright: its left half (with a bias of 0.5),
    its right half, and (a constant) neither; mirroring an image swaps the halves."""

    def forward(self, images):
        width = images.shape[-1]
        left = images[..., : width // 2].mean((1, 2, 3))
        right = images[..., width // 2 :].mean((1, 2, 3))
        return torch.stack([4 * left + 0.5, 4 * right, torch.full_like(left, 1.0)], 1)


def test_flip_tta_scores_by_the_mean_probability_of_an_image_and_its_mirror():
    images = torch.zeros(4, 1, 4, 4)
    images[0, ..., :2] = 1.0  # left: class 0
    images[1, ..., 2:] = 1.0  # right: class 1
    images[3, ..., :2] = 0.3  # left, faintly: class 0; image 2 is dark: class 2
    labels = torch.tensor([0, 1, 2, 0])
    loader = [(images[:3], labels[:3]), (images[3:], labels[3:])]
    model = LeftRightHalves()

    plain = evaluate(model, loader, 3, tta="none")
    logits = model(images)
    assert plain.loss == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item())
    assert plain.top1 == 1.0

    flipped = evaluate(model, loader, 3, tta="flip")
    probs = (logits.softmax(1) + model(images.flip(-1)).softmax(1)) / 2
    expected = torch.nn.functional.nll_loss(probs.log(), labels).item()
    assert flipped.loss == pytest.approx(expected, rel=1e-6)
    # The mirror of the right-bright image reads as left-bright, and the bias makes the mean
    # of the two views class 0: the one image that TTA gets wrong.
    assert probs.argmax(1).tolist() == [0, 0, 2, 0]
    assert flipped.confusion.tolist() == [[2, 0, 0], [1, 0, 0], [0, 0, 1]]
    assert (flipped.top1, flipped.top5, flipped.count) == (0.75, 1.0, 4)


def test_flip_tta_of_a_mirror_invariant_model_changes_nothing():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    )
    images, labels = torch.randn(8, 1, 5, 5), torch.randint(0, 3, (8,))
    plain = evaluate(model, [(images, labels)], 3)
    flipped = evaluate(model, [(images, labels)], 3, tta="flip")
    assert flipped.loss == pytest.approx(plain.loss, rel=1e-5)
    assert torch.equal(flipped.confusion, plain.confusion)


def test_unknown_tta_is_refused_with_what_is_allowed():
    with pytest.raises(MobileNetsError, match="tta 'crop' is not one of none, flip"):
        evaluate(LeftRightHalves(), [], 3, tta="crop")
