"""Segmentation data: every format's reader, the synthetic generator, the data specs, the
transforms, and the errors a user can cause."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat
from segmentation_files import (
    write_cityscapes,
    write_coco_voc,
    write_folder,
    write_sbd,
    write_voc,
)

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from mobilenets.data.detection import VOC_CLASSES
from mobilenets.data.segmentation import (
    CITYSCAPES_CLASSES,
    COCO_TRAIN_MIN_AREA,
    IGNORE_INDEX,
    SEGMENTATION_DATA_HELP,
    CityscapesSegmentation,
    CocoSegmentation,
    FolderSegmentation,
    VocAugSegmentation,
    VocSegmentation,
    collate_segmentation,
    load_segmentation_data,
)
from mobilenets.data.segmentation_transforms import (
    eval_transform,
    segmentation_preprocessing,
    train_transform,
)
from mobilenets.data.shapes import SHAPES, make_synthetic_coco, make_synthetic_segmentation

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: threads only contend
PREPROCESSING = Preprocessing(32, IMAGENET_MEAN, IMAGENET_STD)


def mask_of(dataset, index: int) -> np.ndarray:
    image, mask = dataset[index]
    assert image.mode == "RGB" and mask.mode == "L" and image.size == mask.size
    return np.array(mask)


# --- Readers ------------------------------------------------------------------------------------


def test_voc_reads_palette_masks_with_their_255_borders(tmp_path):
    masks = write_voc(tmp_path, {"train": ["2007_000032", "2007_000039"], "val": ["2007_000033"]})
    assert Image.open(tmp_path / "SegmentationClass/2007_000032.png").mode == "P"
    train = VocSegmentation(tmp_path, "train")
    assert train.class_names == ("background", *VOC_CLASSES) and train.num_classes == 21
    assert train.ignore_index == IGNORE_INDEX == 255
    assert [image.stem for image, _ in train.files] == ["2007_000032", "2007_000039"]
    for index, name in enumerate(("2007_000032", "2007_000039")):
        assert np.array_equal(mask_of(train, index), masks[name])
    assert set(np.unique(mask_of(train, 1))) == {0, 2, 255}
    assert len(VocSegmentation(tmp_path, "trainval")) == 3


def test_voc_aug_is_voc_train_and_sbd_less_voc_val(tmp_path):
    voc = write_voc(tmp_path / "voc", {"train": ["a", "b"], "val": ["c", "d"]})
    sbd = write_sbd(tmp_path / "sbd", {"train": ["b", "c", "e"], "val": ["f"]})
    dataset = VocAugSegmentation(tmp_path / "voc", tmp_path / "sbd")
    assert [image.stem for image, _ in dataset.files] == ["a", "b", "e", "f"]
    assert [mask.suffix for _, mask in dataset.files] == [".png", ".png", ".mat", ".mat"]
    expected = [voc["a"], voc["b"], sbd["e"], sbd["f"]]  # b: VOC's own mask, not SBD's
    for index, mask in enumerate(expected):
        assert np.array_equal(mask_of(dataset, index), mask)
    assert dataset.num_classes == 21


def test_cityscapes_label_ids_become_the_19_train_ids(tmp_path):
    masks = write_cityscapes(tmp_path, "val", {"aachen": 1, "bremen": 2})
    dataset = CityscapesSegmentation(tmp_path, "val")
    assert dataset.class_names == CITYSCAPES_CLASSES and dataset.num_classes == 19
    assert [image.parent.name for image, _ in dataset.files] == ["aachen", "bremen", "bremen"]
    for index, (image, _) in enumerate(dataset.files):
        assert np.array_equal(mask_of(dataset, index), masks[image.name])
    assert set(np.unique(mask_of(dataset, 0))) == {0, 11, 13, 18, 255}  # unlabeled: 255


def test_coco_keeps_the_voc_categories_and_ignores_overlaps(tmp_path):
    masks = write_coco_voc(tmp_path)
    images, annotations = tmp_path / "val2017", tmp_path / "annotations/instances_val2017.json"
    dataset = CocoSegmentation(images, annotations)
    assert dataset.num_classes == 21 and len(dataset) == 3
    for index, (image, _) in enumerate(dataset.files):
        assert np.array_equal(mask_of(dataset, index), masks[image.name]), image.name
    # Training keeps images whose VOC annotations have area > 1000: a (1128), not b (230), not c.
    training = CocoSegmentation(images, annotations, min_area=COCO_TRAIN_MIN_AREA)
    assert [image.name for image, _ in training.files] == ["a.jpg"]
    smaller = CocoSegmentation(images, annotations, min_area=100)
    assert [image.name for image, _ in smaller.files] == ["a.jpg", "b.jpg"]


def test_folder_with_and_without_classes_txt(tmp_path):
    masks = write_folder(
        tmp_path / "named", num_classes=3, class_names=["sky", "road", "car"], image_format="jpg"
    )
    named = FolderSegmentation(tmp_path / "named", "val")
    assert named.class_names == ("sky", "road", "car") and len(named) == 2
    assert np.array_equal(mask_of(named, 1), masks["val/val_001"])
    write_folder(tmp_path / "counted", {"train": 2, "val": 4}, num_classes=4)  # label 3 only in val
    counted = FolderSegmentation(tmp_path / "counted", "train")
    assert counted.class_names == ("class_0", "class_1", "class_2", "class_3")


def test_synthetic_segmentation_matches_the_detection_images_and_is_deterministic(tmp_path):
    written = make_synthetic_segmentation(
        tmp_path / "a", num_train=2, num_val=3, image_size=64, seed=4
    )
    again = make_synthetic_segmentation(
        tmp_path / "b", num_train=0, num_val=3, image_size=64, seed=4
    )
    other = make_synthetic_segmentation(
        tmp_path / "c", num_train=0, num_val=1, image_size=64, seed=5
    )
    detection = make_synthetic_coco(
        tmp_path / "d", num_train=0, num_val=3, image_size=64, seed=4, image_format="png"
    )
    images, masks = written["val"]
    for name in ("000000.png", "000002.png"):
        assert (images / name).read_bytes() == (detection["val"][0] / name).read_bytes()
        assert (masks / name).read_bytes() == (again["val"][1] / name).read_bytes()
    assert (masks / "000000.png").read_bytes() != (other["val"][1] / "000000.png").read_bytes()
    assert (tmp_path / "a/classes.txt").read_text().split() == ["background", *SHAPES]

    dataset = FolderSegmentation(tmp_path / "a", "val")
    assert dataset.class_names == ("background", *SHAPES)
    for index in range(len(dataset)):
        image, mask = (np.array(x) for x in dataset[index])
        assert mask.max() >= 1 and (mask == 0).mean() > 0.2  # shapes on a background
        shapes = image[mask > 0].reshape(-1, 3)
        background = image[mask == 0].reshape(-1, 3)
        # A shape is filled with one flat colour, so the pixels the mask gives it hold as many
        # colours as there are shapes; the noisy background holds hundreds.
        assert len(np.unique(shapes, axis=0)) <= 4 < 100 < len(np.unique(background, axis=0))


# --- Data specs ---------------------------------------------------------------------------------


def test_specs_name_every_format(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    write_voc(tmp_path / "voc", {"train": ["a", "b"], "val": ["c"]})
    write_sbd(tmp_path / "sbd", {"train": ["c", "d"], "val": ["e"]})
    voc = load_segmentation_data("voc:~/voc")
    assert (len(voc.train), len(voc.val), voc.num_classes) == (2, 1, 21)
    assert voc.ignore_index == 255
    aug = load_segmentation_data("voc-aug:~/voc,~/sbd")
    assert (len(aug.train), len(aug.val)) == (4, 1)  # a, b, d, e; c is VOC val

    write_cityscapes(tmp_path / "city", "train")
    write_cityscapes(tmp_path / "city", "val", {"lindau": 1})
    city = load_segmentation_data(f"cityscapes:{tmp_path / 'city'}")
    assert (len(city.train), len(city.val), city.class_names) == (2, 1, CITYSCAPES_CLASSES)

    write_coco_voc(tmp_path / "coco", "train2017")
    write_coco_voc(tmp_path / "coco", "val2017")
    coco = load_segmentation_data(f"coco:{tmp_path / 'coco'}")
    assert (len(coco.train), len(coco.val)) == (1, 3)  # training keeps area > 1000

    write_folder(tmp_path / "folder", {"train": 2, "val": 3}, num_classes=5)
    folder = load_segmentation_data("folder:~/folder", splits=("val",))
    assert folder.train is None and len(folder.val) == 3 and folder.num_classes == 5


def test_synthetic_shapes_spec_is_generated_once_into_the_data_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("MOBILENETS_DATA", str(tmp_path))
    data = load_segmentation_data("synthetic-shapes:5")
    assert (len(data.train), len(data.val)) == (5, 1)
    assert data.class_names == ("background", *SHAPES)
    root = tmp_path / "synthetic-shapes-segmentation-5-128px-seed0"
    assert data.train.files[0][1].parent == root / "train" / "masks"
    assert [p.name for p in tmp_path.iterdir()] == [root.name]  # no temporary folder left
    stamp = (root / "val/masks/000000.png").stat().st_mtime_ns
    load_segmentation_data("synthetic-shapes:5")
    assert (root / "val/masks/000000.png").stat().st_mtime_ns == stamp  # not written again


@pytest.mark.parametrize(
    "spec", ["", "voc", "voc:", "pascal:/data", "voc-aug:/only/one", "synthetic-shapes:x"]
)
def test_a_bad_spec_lists_the_forms(spec):
    with pytest.raises(MobileNetsError) as error:
        load_segmentation_data(spec)
    if spec.startswith("synthetic-shapes"):
        assert "positive number of training images, got 'x'" in str(error.value)
    else:
        assert str(error.value) == f"data={spec!r} is not one of: {SEGMENTATION_DATA_HELP}"


def test_a_spec_naming_a_missing_folder_names_it(tmp_path):
    with pytest.raises(MobileNetsError, match=re.escape(f"{str(tmp_path / 'nope')!r} is not a")):
        load_segmentation_data(f"cityscapes:{tmp_path / 'nope'}")


# --- Errors -------------------------------------------------------------------------------------


def test_a_label_out_of_range_names_the_mask_and_the_values(tmp_path):
    write_folder(tmp_path, {"train": 2}, class_names=["a", "b", "c"])
    bad = np.zeros((24, 32), dtype=np.uint8)
    bad[0, :3] = [7, 9, 255]
    Image.fromarray(bad).save(tmp_path / "train/masks/train_001.png")
    dataset = FolderSegmentation(tmp_path, "train")
    dataset[0]
    with pytest.raises(MobileNetsError) as error:
        dataset[1]
    assert str(error.value) == (
        f"mask {str(tmp_path / 'train/masks/train_001.png')!r} holds values [7, 9]; allowed are "
        "the class indices 0..2 and 255 (ignore)"
    )


def test_an_image_and_mask_of_different_sizes_name_both(tmp_path):
    write_folder(tmp_path, {"train": 1}, class_names=["a", "b", "c"])
    Image.new("RGB", (30, 24)).save(tmp_path / "train/images/train_000.png")
    with pytest.raises(MobileNetsError) as error:
        FolderSegmentation(tmp_path, "train")[0]
    assert str(error.value) == (
        f"image {str(tmp_path / 'train/images/train_000.png')!r} is 30x24 but its mask "
        f"{str(tmp_path / 'train/masks/train_000.png')!r} is 32x24"
    )


def test_unreadable_files_are_named(tmp_path):
    write_voc(tmp_path, {"train": ["a", "b", "c"]})
    (tmp_path / "SegmentationClass/a.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (tmp_path / "JPEGImages/b.jpg").write_bytes(b"not a jpeg")
    Image.new("RGB", (32, 24)).save(tmp_path / "SegmentationClass/c.png")
    dataset = VocSegmentation(tmp_path, "train")
    with pytest.raises(MobileNetsError, match=r"cannot read image .*SegmentationClass/a\.png"):
        dataset[0]
    with pytest.raises(MobileNetsError, match=r"cannot read image .*JPEGImages/b\.jpg"):
        dataset[1]
    with pytest.raises(MobileNetsError, match=r"c\.png' is a mode 'RGB' image; a mask is a single"):
        dataset[2]


def test_missing_split_files_and_folders_are_named(tmp_path):
    write_voc(tmp_path / "voc", {"train": ["a"], "val": ["b"]})
    with pytest.raises(
        MobileNetsError, match=r"cannot read the split file .*Segmentation/test\.txt"
    ):
        VocSegmentation(tmp_path / "voc", "test")
    (tmp_path / "voc/JPEGImages/a.jpg").unlink()
    with pytest.raises(MobileNetsError, match=r"JPEGImages/a\.jpg' does not exist \(needed by VOC"):
        VocSegmentation(tmp_path / "voc", "train")
    with pytest.raises(MobileNetsError, match=r"cannot read the split file .*sbd/train\.txt'"):
        VocAugSegmentation(tmp_path / "voc", tmp_path / "sbd")
    with pytest.raises(MobileNetsError, match=r"leftImg8bit/train' is not a folder"):
        CityscapesSegmentation(tmp_path, "train")
    with pytest.raises(MobileNetsError, match=r"folder split 'val': .*/val/images' is not a"):
        FolderSegmentation(tmp_path, "val")
    write_cityscapes(tmp_path / "city", "val")
    (tmp_path / "city/gtFine/val/aachen/aachen_000000_000001_gtFine_labelIds.png").unlink()
    with pytest.raises(MobileNetsError, match=r"000001_gtFine_labelIds\.png' does not exist"):
        CityscapesSegmentation(tmp_path / "city", "val")


def test_an_image_without_a_mask_or_a_mask_without_an_image_is_named(tmp_path):
    write_folder(tmp_path, {"train": 2}, num_classes=3)
    stray = tmp_path / "train/images/stray.jpg"
    Image.new("RGB", (32, 24)).save(stray)
    with pytest.raises(MobileNetsError, match=re.escape(f"image {str(stray)!r} has no mask")):
        FolderSegmentation(tmp_path, "train")
    stray.unlink()
    lonely = tmp_path / "train/masks/lonely.png"
    Image.new("L", (32, 24)).save(lonely)
    with pytest.raises(MobileNetsError, match=re.escape(f"mask {str(lonely)!r} has no image")):
        FolderSegmentation(tmp_path, "train")


def test_broken_sbd_and_coco_annotations_are_named(tmp_path, caplog):
    write_voc(tmp_path / "voc", {"train": ["a"], "val": ["b"]})
    write_sbd(tmp_path / "sbd", {"train": ["c", "d"], "val": []})
    (tmp_path / "sbd/cls/c.mat").write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    savemat(tmp_path / "sbd/cls/d.mat", {"GTinst": {"Segmentation": np.zeros((24, 32))}})
    dataset = VocAugSegmentation(tmp_path / "voc", tmp_path / "sbd")
    with pytest.raises(MobileNetsError, match=r"cannot read SBD mask .*cls/c\.mat"):
        dataset[1]
    with pytest.raises(MobileNetsError, match=r"d\.mat' has no class map: it needs a struct GTcls"):
        dataset[2]

    masks = write_coco_voc(tmp_path / "coco")
    images, annotations = (
        tmp_path / "coco/val2017",
        tmp_path / "coco/annotations/instances_val2017.json",
    )
    dataset = json.loads(annotations.read_text())
    dataset["annotations"][4]["segmentation"].append([1, 1, 3, 3])  # the car: a 2-point polygon
    annotations.write_text(json.dumps(dataset))
    coco = CocoSegmentation(images, annotations)
    assert "1 polygons of fewer than 3 points cover no pixels" in caplog.text
    assert np.array_equal(mask_of(coco, 1), masks["b.jpg"])
    dataset["annotations"][0]["segmentation"] = [{"x": [2, 2, 8, 2, 8, 6]}]
    annotations.write_text(json.dumps(dataset))
    with pytest.raises(MobileNetsError, match=r"annotation 1: segmentation must be a list of"):
        CocoSegmentation(images, annotations)


# --- Transforms ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    write_voc(root, {"train": ["a", "b"]}, size=(40, 30))
    return root


def test_train_transform_gives_the_crop_as_float_and_int64(voc):
    dataset = VocSegmentation(voc, "train", transform=train_transform(PREPROCESSING, crop=24))
    for seed in range(6):
        image, mask = dataset[(seed % 2, seed)]
        assert image.shape == (3, 24, 24) and image.dtype == torch.float32
        assert mask.shape == (24, 24) and mask.dtype == torch.int64
        assert type(image) is torch.Tensor and type(mask) is torch.Tensor
        assert set(mask.unique().tolist()) <= {0, 1, 2, 255}
    first, again = dataset[(1, 7)], dataset[(1, 7)]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    other = dataset[(1, 8)]
    assert not torch.equal(first[0], other[0])


def test_train_transform_pads_with_the_mean_and_the_ignore_index(voc):
    transform = train_transform(PREPROCESSING, crop=48, scale=(1.0, 1.0), flip=False)
    dataset = VocSegmentation(voc, "train", transform=transform)
    image, mask = dataset[(0, 3)]
    padding = mask == IGNORE_INDEX
    inside = torch.zeros_like(padding)
    rows, columns = torch.nonzero(~padding, as_tuple=True)
    inside[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1] = True
    assert (rows.max() - rows.min() + 1, columns.max() - columns.min() + 1) == (30, 40)
    assert padding[~inside].all() and image[:, ~inside].abs().max() < 1e-6  # mean -> 0


def test_flip_moves_image_and_mask_together(voc):
    plain = VocSegmentation(voc, "train", transform=eval_transform(PREPROCESSING))
    flipping = VocSegmentation(
        voc, "train", transform=train_transform(PREPROCESSING, crop=30, scale=(1.0, 1.0))
    )
    image, mask = plain[0]
    seen = set()
    for seed in range(8):
        cropped, cropped_mask = flipping[(0, seed)]
        left = next(
            x
            for x in range(11)
            if torch.equal(cropped, image[:, :, x : x + 30])
            or torch.equal(cropped, image[:, :, x : x + 30].flip(-1))
        )
        flipped = not torch.equal(cropped, image[:, :, left : left + 30])
        expected = mask[:, left : left + 30]
        assert torch.equal(cropped_mask, expected.flip(-1) if flipped else expected)
        seen.add(flipped)
    assert seen == {True, False}


def test_eval_transform_keeps_the_full_size(voc):
    dataset = VocSegmentation(voc, "train", transform=eval_transform(PREPROCESSING))
    raw = VocSegmentation(voc, "train")
    image, mask = dataset[1]
    assert image.shape == (3, 30, 40) and mask.dtype == torch.int64
    assert torch.equal(mask, torch.from_numpy(np.array(raw[1][1])).long())
    pixels = torch.from_numpy(np.array(raw[1][0])).permute(2, 0, 1) / 255
    mean, std = (
        torch.tensor(IMAGENET_MEAN)[:, None, None],
        torch.tensor(IMAGENET_STD)[:, None, None],
    )
    assert torch.allclose(image, (pixels - mean) / std, atol=1e-5)
    images, masks = collate_segmentation([dataset[0], (image[:, :20], mask[:20])])
    assert images.shape == (2, 3, 30, 40) and (masks[1, 20:] == IGNORE_INDEX).all()


def test_segmentation_preprocessing_follows_the_backbone_weights():
    imagenet = segmentation_preprocessing(None)
    assert (imagenet.mean, imagenet.std, imagenet.resolution) == (IMAGENET_MEAN, IMAGENET_STD, 513)
    keras = segmentation_preprocessing("keras")
    assert keras.mean == (0.5, 0.5, 0.5) and keras.std == (0.5, 0.5, 0.5)
