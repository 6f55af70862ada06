"""Segmenting images: test-time augmentation (flip, multiscale at TF DeepLab's sizes) of a model's
class scores, and drawing masks in the VOC colours."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.segmentation_cost import MULTISCALE, scaled_size
from mobilenets.tasks.segmentation.inference import (
    TTA_MODES,
    mask_image,
    overlay,
    palette,
    segment_logits,
)


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


def test_palette_overlay_and_mask_image():
    colours = palette()
    assert len(colours) == 768 and colours[:6] == [0, 0, 0, 128, 0, 0]
    assert colours[3 * 255 : 3 * 256] == [224, 224, 192]  # VOC's border colour
    image = Image.new("RGB", (3, 1), (100, 100, 100))
    mask = torch.tensor([[0, 1, 255]])
    blended = np.asarray(overlay(image, mask, opacity=0.5)).astype(int)
    assert blended.tolist() == [[[50, 50, 50], [114, 50, 50], [162, 162, 146]]]
    assert np.array_equal(np.asarray(overlay(image, mask, opacity=0.0)), np.asarray(image))
    with pytest.raises(MobileNetsError, match="the mask is 2x1, the image 3x1"):
        overlay(image, torch.zeros(1, 2, dtype=torch.int64))
    with pytest.raises(MobileNetsError, match=r"class indices 0..255, got values -1..0"):
        mask_image(torch.tensor([[-1, 0]]))
