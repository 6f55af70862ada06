"""Segmentation evaluation: whole-set mIoU over a dataset of images of different sizes, padding
never scored, with test-time augmentation, and the errors a caller can cause."""

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from mobilenets.core.errors import MobileNetsError
from mobilenets.tasks.segmentation.evaluate import evaluate_segmenter
from mobilenets.tasks.segmentation.inference import segment_logits
from mobilenets.tasks.segmentation.metrics import ConfusionMatrix

from .test_inference import PixelClassifier


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
