"""Segmentation evaluation: test-time augmentation (flip, multiscale), whole-set mIoU over a
dataset of images of different sizes, padding never scored, and the errors a caller can cause."""

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from mobilenets.core.errors import MobileNetsError
from mobilenets.tasks.segmentation.evaluate import (
    MULTISCALE,
    TTA_MODES,
    evaluate_segmenter,
    scaled_size,
    segment_logits,
)
from mobilenets.tasks.segmentation.metrics import ConfusionMatrix


class PixelClassifier(nn.Module):
    """A 1x1 convolution: each pixel's logits are its own channel values (identity weights),
    so the prediction is the brightest channel and zero padding predicts class 0."""

    num_classes = 3

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(3)[:, :, None, None])
            self.conv.bias.zero_()
        self.modes = []  # training mode at each forward pass

    def forward(self, images):
        self.modes.append(self.training)
        return self.conv(images)


class LeftLeaning(nn.Module):
    """A horizontal 1x3 convolution that looks at the left neighbour only: not mirror
    symmetric. Records the input size of every call."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, num_classes, (1, 3), padding=(0, 1))
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=generator))
            self.conv.weight[..., 2] = 0
        self.sizes = []

    def forward(self, images):
        self.sizes.append(tuple(images.shape[-2:]))
        return self.conv(images)


class Shapes(Dataset):
    """In-memory images of different sizes whose brightest channel is the true class on most
    pixels; items are looked up by (index, seed) like the package's datasets."""

    num_classes = 3
    class_names = ("background", "cat", "dog")

    def __init__(self, sizes=((5, 7), (8, 4), (3, 3), (6, 9), (4, 4))) -> None:
        generator = torch.Generator().manual_seed(0)
        self.items = []
        for height, width in sizes:
            image = torch.rand(3, height, width, generator=generator)
            mask = image.argmax(0)
            wrong = torch.rand(height, width, generator=generator) < 0.3
            mask[wrong] = (mask[wrong] + 1) % 3
            mask[0, 0] = 255  # a skipped pixel inside the image
            self.items.append((image, mask))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, item):
        index, _seed = item
        return self.items[index]


def test_scaled_size_is_tf_deeplabs_scale_dimension():
    assert [scaled_size(513, scale) for scale in MULTISCALE] == [257, 385, 513, 641, 769, 897]
    assert [scaled_size(33, scale) for scale in MULTISCALE] == [17, 25, 33, 41, 49, 57]
    assert scaled_size(10, 0.75) == 7  # int(9 * 0.75 + 1) = int(7.75)


def test_no_tta_gives_the_model_logits():
    model = LeftLeaning()
    images = torch.randn(2, 3, 5, 6)
    assert torch.equal(segment_logits(model, images), model(images))


def test_flip_tta_averages_probabilities_of_an_image_and_its_mirror():
    model = LeftLeaning()
    images = torch.randn(2, 3, 5, 6)
    scores = segment_logits(model, images, "flip")
    expected = (model(images).softmax(1) + model(images.flip(-1)).flip(-1).softmax(1)) / 2
    assert torch.allclose(scores, expected, rtol=0, atol=1e-7)
    # Whatever the model, the flip-averaged scores of a mirror image are the mirror of its
    # scores; this model's own are not.
    assert torch.allclose(
        segment_logits(model, images.flip(-1), "flip"), scores.flip(-1), rtol=0, atol=1e-6
    )
    assert not torch.allclose(model(images.flip(-1)), model(images).flip(-1), atol=1e-3)


def test_multiscale_tta_runs_six_scales_with_mirrors_at_tf_deeplab_sizes():
    model = LeftLeaning()
    images = torch.randn(2, 3, 33, 21)
    model.sizes.clear()
    scores = segment_logits(model, images, "multiscale")
    assert scores.shape == (2, 4, 33, 21)
    expected = [(scaled_size(33, s), scaled_size(21, s)) for s in MULTISCALE for _ in range(2)]
    assert model.sizes == expected  # (17, 11), (17, 11), (25, 16), ... (57, 36), (57, 36)
    assert torch.allclose(scores.sum(1), torch.ones(2, 33, 21), atol=1e-6)  # probabilities
    assert torch.allclose(
        segment_logits(model, images.flip(-1), "multiscale"), scores.flip(-1), rtol=0, atol=1e-6
    )


def test_multiscale_of_a_uniform_image_through_a_pixelwise_model_is_its_softmax():
    # Resizing a uniform image or uniform logits changes nothing, so every view agrees.
    model = PixelClassifier()
    images = torch.tensor([0.2, 1.0, -0.5])[None, :, None, None].expand(1, 3, 9, 13)
    scores = segment_logits(model, images, "multiscale")
    assert torch.allclose(scores, model(images).softmax(1), rtol=0, atol=1e-6)


def test_an_output_smaller_than_the_input_is_resized_to_it():
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.AvgPool2d(2))
    images = torch.randn(1, 3, 8, 6)
    for tta in TTA_MODES:
        assert segment_logits(model, images, tta).shape == (1, 2, 8, 6)


def test_unknown_tta_is_refused_with_what_is_allowed():
    message = "tta 'crop' is not one of none, flip, multiscale"
    with pytest.raises(MobileNetsError, match=message):
        segment_logits(PixelClassifier(), torch.zeros(1, 3, 2, 2), "crop")
    with pytest.raises(MobileNetsError, match=message):
        evaluate_segmenter(PixelClassifier(), Shapes(), tta="crop", progress=False)


def test_evaluation_scores_the_whole_set_the_same_at_any_batch_size():
    dataset = Shapes()
    expected = ConfusionMatrix(3)  # image by image, without padding
    for image, mask in dataset.items:
        expected.update(image.argmax(0), mask)
    results = [
        evaluate_segmenter(PixelClassifier(), dataset, batch_size=size, progress=False)
        for size in (1, 2, 3, 5)
    ]
    assert all(result == results[0] for result in results)
    assert results[0] == expected.summary(Shapes.class_names)
    # Padding predicts class 0 but is never scored: only the images' own pixels count.
    assert results[0]["pixels"] == sum(mask.numel() - 1 for _, mask in dataset.items) == 141
    assert set(results[0]) >= {"mIoU", "pixel_accuracy", "mean_accuracy", "fwIoU", "IoU"}
    assert 0.5 < results[0]["mIoU"] < 1  # some mask pixels were made wrong on purpose


def test_flip_tta_of_a_pixelwise_model_changes_no_prediction():
    plain = evaluate_segmenter(PixelClassifier(), Shapes(), batch_size=2, progress=False)
    flipped = evaluate_segmenter(
        PixelClassifier(), Shapes(), tta="flip", batch_size=2, progress=False
    )
    assert flipped == plain


def test_the_model_is_scored_in_eval_mode_and_its_mode_restored():
    model = PixelClassifier().train()
    evaluate_segmenter(model, Shapes(), batch_size=5, progress=False)
    assert model.modes == [False] and model.training
    model.eval()
    evaluate_segmenter(model, Shapes(), batch_size=5, progress=False)
    assert not model.training


def test_num_classes_comes_from_the_model_else_the_dataset():
    bare = nn.Conv2d(3, 3, 1)  # no num_classes: the dataset's 3
    assert len(evaluate_segmenter(bare, Shapes(), progress=False)["IoU"]) == 3
    model = PixelClassifier()
    model.num_classes = 4
    with pytest.raises(MobileNetsError, match="the model has 4 classes, the data 3"):
        evaluate_segmenter(model, Shapes(), progress=False)
    wider = evaluate_segmenter(model, Shapes(), num_classes=4, progress=False)
    assert wider["IoU"][3] is None and wider["classes"] == ["0", "1", "2", "3"]

    class Unnamed(Shapes):
        num_classes = None

    with pytest.raises(MobileNetsError, match="num_classes= is needed"):
        evaluate_segmenter(bare, Unnamed(), progress=False)


def test_empty_data_and_out_of_range_masks_are_refused():
    with pytest.raises(MobileNetsError, match="evaluation data is empty"):
        evaluate_segmenter(PixelClassifier(), Shapes(sizes=()), progress=False)
    dataset = Shapes()
    dataset.items[1][1][2, 2] = 3
    with pytest.raises(MobileNetsError, match=r"target has class indices \[3\], outside 0\.\.2"):
        evaluate_segmenter(PixelClassifier(), dataset, progress=False)
