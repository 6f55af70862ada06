"""Detection data: the synthetic generator, COCO and VOC readers, transforms, COCO mAP."""

import json

import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.preprocessing import Preprocessing
from mobilenets.data.detection import CocoDetection, VocDetection, collate_detections
from mobilenets.data.detection_transforms import eval_transform, train_transform
from mobilenets.data.shapes import SHAPES, make_synthetic_coco
from mobilenets.tasks.detection.evaluate import evaluate_coco

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: threads only contend
PREPROCESSING = Preprocessing(96, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return make_synthetic_coco(root, num_train=24, num_val=8, image_size=96, seed=1)


def perfect(dataset: CocoDetection) -> dict:
    """Detections equal to the ground truth, score 1."""
    detections = {}
    for index in range(len(dataset)):
        _, target = dataset[index]
        boxes = target["boxes"].as_subclass(torch.Tensor)
        detections[target["image_id"]] = {
            "boxes": boxes,
            "scores": torch.ones(len(boxes)),
            "labels": target["labels"],
        }
    return detections


# --- Synthetic generator ----------------------------------------------------------------------


def test_synthetic_coco_is_valid_and_inside_the_image(shapes):
    images, annotations = shapes["train"]
    dataset = CocoDetection(images, annotations)
    assert len(dataset) == 24
    assert dataset.class_names == ("__background__", *SHAPES)
    assert dataset.category_ids == (0, 1, 2, 3, 4)
    coco = dataset.coco
    assert len(coco.getAnnIds()) >= 24  # at least one object per image
    assert len({a["category_id"] for a in coco.anns.values()}) >= 3
    for annotation in coco.anns.values():
        x, y, w, h = annotation["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 96 and y + h <= 96 and w > 5 and h > 5
    image, target = dataset[0]
    assert image.size == (96, 96) and image.mode == "RGB"
    assert isinstance(target["boxes"], tv_tensors.BoundingBoxes)
    assert target["labels"].min() >= 1


def test_synthetic_coco_is_deterministic_for_a_seed(tmp_path, shapes):
    again = make_synthetic_coco(tmp_path / "a", num_train=3, num_val=8, image_size=96, seed=1)
    other = make_synthetic_coco(tmp_path / "b", num_train=3, num_val=8, image_size=96, seed=2)
    # Validation images do not depend on the number of training images.
    assert again["val"][1].read_text() == shapes["val"][1].read_text()
    first = (shapes["val"][0] / "000000.jpg").read_bytes()
    assert (again["val"][0] / "000000.jpg").read_bytes() == first
    assert (other["val"][0] / "000000.jpg").read_bytes() != first
    assert other["val"][1].read_text() != shapes["val"][1].read_text()


def test_synthetic_coco_rejects_bad_settings(tmp_path):
    with pytest.raises(MobileNetsError, match="min_size <= max_size"):
        make_synthetic_coco(tmp_path, 1, 1, min_size=0.6, max_size=0.5)
    with pytest.raises(MobileNetsError, match="image_format must be one of jpg, png"):
        make_synthetic_coco(tmp_path, 1, 1, image_format="gif")


# --- COCO and VOC readers ----------------------------------------------------------------------


def write_coco(tmp_path, bbox, category_id=1):
    Image.new("RGB", (20, 10)).save(tmp_path / "a.jpg")
    dataset = {
        "images": [{"id": 7, "file_name": "a.jpg", "width": 20, "height": 10}],
        "annotations": [
            {
                "id": 3,
                "image_id": 7,
                "category_id": category_id,
                "bbox": bbox,
                "area": 1,
                "iscrowd": 0,
            }
        ],
        "categories": [{"id": 5, "name": "x"}, {"id": 1, "name": "y"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(dataset))
    return tmp_path, tmp_path / "ann.json"


def test_coco_labels_are_contiguous_and_boxes_clipped(tmp_path):
    dataset = CocoDetection(*write_coco(tmp_path, [2, 1, 19, 10], category_id=5))
    assert dataset.category_ids == (0, 1, 5) and dataset.class_names[1:] == ("y", "x")
    image, target = dataset[0]
    assert target["labels"].tolist() == [2] and target["image_id"] == 7
    assert target["boxes"].tolist() == [[2, 1, 20, 10]] and target["orig_size"] == (10, 20)


def test_coco_malformed_annotation_names_the_file(tmp_path):
    with pytest.raises(MobileNetsError, match=r"ann\.json', annotation 3: bbox must be"):
        CocoDetection(*write_coco(tmp_path, [2, 1, -4, 3]))
    with pytest.raises(MobileNetsError, match="category_id 9 is not among the categories"):
        CocoDetection(*write_coco(tmp_path, [2, 1, 4, 3], category_id=9))
    images, annotations = write_coco(tmp_path, [2, 1, 4, 3])
    dataset = json.loads(annotations.read_text())
    del dataset["images"][0]["height"]
    annotations.write_text(json.dumps(dataset))
    with pytest.raises(MobileNetsError, match="image 7: needs file_name, width and height"):
        CocoDetection(images, annotations)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(MobileNetsError, match="broken.json"):
        CocoDetection(tmp_path, tmp_path / "broken.json")


def test_corrupt_image_error_names_the_file(tmp_path):
    images, annotations = write_coco(tmp_path, [2, 1, 4, 3])
    (images / "a.jpg").write_bytes(b"not a jpeg")
    dataset = CocoDetection(images, annotations)
    with pytest.raises(MobileNetsError, match=r"cannot read image .*a\.jpg"):
        dataset[0]


def test_image_size_disagreeing_with_the_annotation_is_an_error(tmp_path):
    images, annotations = write_coco(tmp_path, [2, 1, 4, 3])
    Image.new("RGB", (30, 10)).save(images / "a.jpg")
    with pytest.raises(MobileNetsError, match=r"a\.jpg' is 30x10 but its annotation says 20x10"):
        CocoDetection(images, annotations)[0]


VOC_XML = """<annotation><filename>{name}.jpg</filename>
<size><width>40</width><height>30</height><depth>3</depth></size>
<object><name>dog</name><difficult>0</difficult>
<bndbox><xmin>1</xmin><ymin>2</ymin><xmax>20</xmax><ymax>30</ymax></bndbox></object>
<object><name>{second}</name><difficult>1</difficult>
<bndbox><xmin>21</xmin><ymin>1</ymin><xmax>40</xmax><ymax>10</ymax></bndbox></object>
</annotation>"""


def write_voc(root, second="cat"):
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for name in ("0001", "0002"):
        (root / "Annotations" / f"{name}.xml").write_text(VOC_XML.format(name=name, second=second))
        Image.new("RGB", (40, 30), (90, 90, 90)).save(root / "JPEGImages" / f"{name}.jpg")
    (root / "ImageSets/Main/val.txt").write_text("0001\n0002\n")
    return root


def test_voc_reader(tmp_path):
    dataset = VocDetection(write_voc(tmp_path), split="val")
    assert len(dataset) == 2 and dataset.num_classes == 21
    image, target = dataset[1]
    assert image.size == (40, 30)
    assert target["boxes"].tolist() == [[0, 1, 20, 30], [20, 0, 40, 10]]
    assert [dataset.class_names[i] for i in target["labels"]] == ["dog", "cat"]
    assert target["difficult"].tolist() == [False, True]
    # Difficult objects are ignored by the COCO evaluation: finding only the dog is perfect.
    detections = {}
    for index in range(len(dataset)):
        _, target = dataset[index]
        easy = ~target["difficult"]
        detections[index] = {
            "boxes": target["boxes"][easy],
            "scores": torch.ones(1),
            "labels": target["labels"][easy],
        }
    metrics = evaluate_coco(dataset.coco, detections, dataset.category_ids)
    assert metrics["AP"] == 1.0


def test_voc_errors_name_the_file(tmp_path):
    with pytest.raises(MobileNetsError, match=r"class 'unicorn' is not one of aeroplane"):
        VocDetection(write_voc(tmp_path / "a", second="unicorn"), split="val")
    root = write_voc(tmp_path / "b")
    (root / "Annotations/0002.xml").write_text("<annotation><size>")
    with pytest.raises(MobileNetsError, match=r"cannot read VOC annotation .*0002\.xml"):
        VocDetection(root, split="val")
    with pytest.raises(MobileNetsError, match=r"ImageSets/Main/train\.txt"):
        VocDetection(root, split="train")


# --- Transforms --------------------------------------------------------------------------------


def test_train_transform_keeps_boxes_valid_over_seeds(shapes):
    dataset = CocoDetection(*shapes["train"], transform=train_transform(PREPROCESSING))
    for seed in range(30):
        image, target = dataset[(seed % len(dataset), seed)]
        boxes = target["boxes"]
        assert image.shape == (3, 96, 96) and image.dtype == torch.float32
        assert type(boxes) is torch.Tensor and boxes.shape == (len(target["labels"]), 4)
        assert (boxes >= 0).all() and (boxes <= 1).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()
    # The seed fixes the augmentation.
    first, again = dataset[(3, 11)], dataset[(3, 11)]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1]["boxes"], again[1]["boxes"])


def test_train_transform_handles_images_without_boxes():
    empty = {
        "boxes": tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(50, 60)),
        "labels": torch.zeros(0, dtype=torch.long),
    }
    torch.manual_seed(0)
    image, target = train_transform(PREPROCESSING)(Image.new("RGB", (60, 50)), empty)
    assert image.shape == (3, 96, 96) and target["boxes"].shape == (0, 4)


def test_eval_transform_normalizes_boxes_and_image(shapes):
    raw = CocoDetection(*shapes["val"])
    resized = CocoDetection(*shapes["val"], transform=eval_transform(PREPROCESSING.at(48)))
    (_, target), (image, moved) = raw[2], resized[2]
    assert image.shape == (3, 48, 48)
    assert torch.allclose(moved["boxes"], target["boxes"] / 96, atol=1e-6)
    assert torch.equal(moved["labels"], target["labels"])
    assert moved["orig_size"] == (96, 96)
    images, targets = collate_detections([resized[0], resized[1]])
    assert images.shape == (2, 3, 48, 48) and len(targets) == 2


# --- COCO evaluation ---------------------------------------------------------------------------


def test_coco_eval_of_perfect_predictions_is_one(shapes):
    dataset = CocoDetection(*shapes["val"])
    metrics = evaluate_coco(shapes["val"][1], perfect(dataset))
    assert metrics["AP"] == 1.0 and metrics["AP50"] == 1.0 and metrics["AP75"] == 1.0
    assert metrics["AR100"] == 1.0
    assert set(metrics) == {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"}


def test_coco_eval_of_worse_predictions_is_lower(shapes):
    dataset = CocoDetection(*shapes["val"])
    shifted = perfect(dataset)
    for found in shifted.values():
        size = found["boxes"][:, 2:] - found["boxes"][:, :2]
        # A fifth of the width to the right: IoU 0.8 / 1.2 = 2/3 for every box, a hit at the
        # IoU thresholds 0.50, 0.55, 0.60 and 0.65, a miss at the six above.
        found["boxes"] = found["boxes"] + size[:, :1] * torch.tensor([0.2, 0, 0.2, 0])
    metrics = evaluate_coco(dataset.coco, shifted)
    assert metrics["AP50"] == 1.0 and metrics["AP75"] == 0.0
    assert metrics["AP"] == pytest.approx(0.4)
    wrong = perfect(dataset)
    for found in wrong.values():
        found["labels"] = found["labels"] % 4 + 1  # every label another class
    assert evaluate_coco(dataset.coco, wrong)["AP"] == 0.0


def test_coco_eval_without_detections_is_zero_and_unknown_images_are_errors(shapes):
    dataset = CocoDetection(*shapes["val"])
    nothing = {
        image_id: {
            "boxes": torch.zeros(0, 4),
            "scores": torch.zeros(0),
            "labels": torch.zeros(0, dtype=torch.long),
        }
        for image_id in dataset.image_ids
    }
    assert set(evaluate_coco(dataset.coco, nothing).values()) == {0.0}
    with pytest.raises(MobileNetsError, match=r"image ids \[999\]"):
        evaluate_coco(dataset.coco, {999: nothing[dataset.image_ids[0]]})
