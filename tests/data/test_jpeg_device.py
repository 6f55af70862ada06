"""The device JPEG pipeline, run on the CPU: decoding, the crop draws against torchvision's,
the resize against interpolate, the CPU path's pixels, determinism, resume and bad files.

Every test writes its own small image folder under tmp_path.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2 as T

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.preprocessing import Preprocessing, imagenet_preprocessing
from mobilenets.data.common import EpochSampler, ImageFiles, open_image, sample_seed, seeded
from mobilenets.data.jpeg_device import (
    JpegFolderOnDevice,
    center_box,
    random_resized_box,
    resized_crops,
)
from mobilenets.data.transforms import eval_transform, train_transform

SOLID = (200, 100, 50)  # the PNG's colour: lossless, so its normalised value is exact


def noise_image(height: int, width: int, seed: int, mode: str = "RGB") -> Image.Image:
    """A smooth random image (JPEG keeps it close to the original)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.BILINEAR)
    return image.convert(mode)


@pytest.fixture
def folder(tmp_path):
    """train/CLASS/*.JPEG of a few sizes, one grayscale, one PNG named .JPEG; (path, label)."""
    samples = []
    sizes = [(375, 500), (500, 375), (240, 320), (64, 48), (120, 90), (90, 160)]
    for number, (height, width) in enumerate(sizes):
        label = number % 2
        path = tmp_path / "train" / f"class{label}" / f"{number}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        noise_image(height, width, number).save(path, "JPEG", quality=95)
        samples.append((str(path), label))
    gray = tmp_path / "train" / "class0" / "gray.JPEG"
    noise_image(100, 130, 99, "L").save(gray, "JPEG", quality=95)
    png = tmp_path / "train" / "class1" / "png.JPEG"
    Image.new("RGB", (80, 60), SOLID).save(png, "PNG")
    return samples + [(str(gray), 0), (str(png), 1)]


def sampler(size: int, **options) -> EpochSampler:
    return EpochSampler(size, seed=3, epoch=1, batch_size=3, drop_last=True, **options)


def epoch(dataset, batch_size=3, **options):
    return list(dataset.batches(sampler(len(dataset), **options), batch_size, "cpu"))


# --- The crop draws and the resize ---------------------------------------------------------------


@pytest.mark.parametrize("height,width", [(375, 500), (500, 375), (64, 48), (10, 400), (400, 10)])
def test_the_draws_are_train_transforms(height, width):
    """Box and flip from sample_seed equal RandomResizedCrop's and RandomHorizontalFlip's draws
    under the same seed, as train_transform makes them (thin images reach the fallback)."""
    crop = T.RandomResizedCrop(224)
    image = torch.zeros(3, height, width, dtype=torch.uint8)

    def torchvision_draws(image):
        params = crop.make_params([image])
        box = (params["top"], params["left"], params["height"], params["width"])
        return box, bool(torch.rand(1).item() < 0.5)

    dataset = JpegFolderOnDevice([], imagenet_preprocessing(224))
    flips = set()
    for index in range(40):
        seed = sample_seed(0, 0, index)
        box, flip = dataset.draws(height, width, seed)
        assert (tuple(int(x) for x in box), flip) == seeded(torchvision_draws, image, seed)
        flips.add(flip)
    assert flips == {True, False}


def test_random_resized_box_matches_get_params_with_the_same_generator():
    """The v1 static get_params draws from the global generator: seeded alike, same boxes."""
    from torchvision.transforms import RandomResizedCrop

    image = torch.zeros(3, 300, 200)
    for seed in range(20):
        torch.manual_seed(seed)
        expected = RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3])
        assert random_resized_box(300, 200, torch.Generator().manual_seed(seed)) == expected


@pytest.mark.parametrize("height,width", [(100, 80), (375, 500)])
def test_a_whole_image_box_is_a_bilinear_resize(height, width):
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8)
    expected = F.interpolate(
        image[None].float(), size=(64, 64), mode="bilinear", align_corners=False
    )
    box = (0.0, 0.0, float(height), float(width))
    one_sample = resized_crops([image], [box], 64, sampling_ratio=1)
    assert (one_sample - expected).abs().max() < 0.02  # of 255
    # The default averages several samples when shrinking: closer to an antialiased resize.
    default = resized_crops([image], [box], 64)
    antialiased = F.interpolate(
        image[None].float(), size=(64, 64), mode="bilinear", align_corners=False, antialias=True
    )
    assert (default - antialiased).abs().mean() < (one_sample - antialiased).abs().mean() / 2


@pytest.mark.parametrize("height,width", [(375, 500), (500, 333), (256, 256)])
def test_the_center_box_is_eval_transforms_resize_and_crop(height, width):
    preprocessing = imagenet_preprocessing(224)  # resize 256, crop 224
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8)
    resized = T.Resize(preprocessing.resize, antialias=False)(image[None].float())
    expected = T.CenterCrop(224)(resized)
    box = center_box(height, width, preprocessing)
    assert (resized_crops([image], [box], 224, sampling_ratio=1) - expected).abs().max() < 0.02


def test_images_of_several_sizes_are_cropped_in_one_call_each():
    """Same-size images share a roi_align call; each still gets its own box."""
    images = [
        torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
        for h, w in [(40, 50), (30, 20), (40, 50)]
    ]
    boxes = [(0.0, 0.0, 40.0, 50.0), (5.0, 2.0, 10.0, 8.0), (10.0, 10.0, 20.0, 30.0)]
    together = resized_crops(images, boxes, 16)
    for i in range(3):
        assert torch.equal(together[i], resized_crops([images[i]], [boxes[i]], 16)[0])


# --- Batches ------------------------------------------------------------------------------------


def test_batches_shapes_dtypes_and_normalisation(folder):
    preprocessing = Preprocessing(32, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    dataset = JpegFolderOnDevice(folder, preprocessing, channels_last=True)
    batches = dataset.batches(EpochSampler(len(folder), shuffle=False), 3, "cpu")
    assert (len(dataset), len(batches)) == (8, 3)
    out = list(batches)
    assert [images.shape for images, _ in out] == [(3, 3, 32, 32)] * 2 + [(2, 3, 32, 32)]
    images, labels = out[-1]
    assert images.dtype == torch.float32 and labels.dtype == torch.int64
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert labels.tolist() == [0, 1]
    # The PNG named .JPEG (last) decodes losslessly: every pixel is its normalised colour.
    expected = (torch.tensor(SOLID) / 255 - torch.tensor(preprocessing.mean)) / torch.tensor(
        preprocessing.std
    )
    assert torch.allclose(images[1], expected.view(3, 1, 1).expand(3, 32, 32), atol=1e-5)
    # The grayscale JPEG comes out RGB, its three channels equal before normalisation.
    gray = images[0] * torch.tensor(preprocessing.std).view(3, 1, 1)
    gray += torch.tensor(preprocessing.mean).view(3, 1, 1)
    assert torch.allclose(gray[0], gray[1], atol=1e-5) and torch.allclose(gray[1], gray[2])


def test_training_pixels_are_the_cpu_paths(folder):
    """Same crops, same flips, nearly the same pixels as train_transform: within uint8 rounding
    where the crop grows to the output size, within a level on average where it shrinks."""
    preprocessing = imagenet_preprocessing(224)
    samples = folder[:6]  # the JPEGs in colour
    cpu = ImageFiles(samples, train_transform(preprocessing, "none", 0.0, small=False))
    dataset = JpegFolderOnDevice(samples, preprocessing)
    flips = set()
    for number in range(2):
        every = EpochSampler(len(samples), seed=5, epoch=number, shuffle=False)
        ((images, labels),) = dataset.batches(every, len(samples), "cpu")
        for position, item in enumerate(every):
            expected, label = cpu[item]
            assert label == labels[position]
            source = open_image(samples[position][0])
            (_, _, height, width), flip = dataset.draws(source.height, source.width, item[1])
            flips.add(flip)
            difference = (images[position] - expected).abs()
            # One pixel level is 1 / 255 / std, under 0.018 (std about 0.225).
            if max(height, width) <= 224:
                assert difference.max() < 0.02
            assert difference.mean() < 0.02
    assert flips == {True, False}


def test_evaluation_is_eval_transforms_resize_and_center_crop(folder):
    preprocessing = imagenet_preprocessing(224)  # shorter side to 256, center crop 224
    samples = folder[:6]
    cpu = ImageFiles(samples, eval_transform(preprocessing))
    dataset = JpegFolderOnDevice(samples, preprocessing, train=False)
    every = EpochSampler(len(samples), shuffle=False)
    ((images, _),) = dataset.batches(every, len(samples), "cpu")
    ((again, _),) = dataset.batches(every, len(samples), "cpu")
    assert torch.equal(images, again)
    for position, item in enumerate(every):
        difference = (images[position] - cpu[item][0]).abs()
        if min(open_image(samples[position][0]).size) <= preprocessing.resize:  # grows
            assert difference.max() < 0.02
        assert difference.mean() < 0.02


def test_epochs_are_deterministic_and_resume_where_they_stopped(folder):
    dataset = JpegFolderOnDevice(folder, imagenet_preprocessing(32))
    whole = epoch(dataset)
    assert len(whole) == 2  # 8 images, batches of 3, the incomplete one dropped
    for (images, labels), (again, labels_again) in zip(whole, epoch(dataset), strict=True):
        assert torch.equal(images, again) and torch.equal(labels, labels_again)
    resumed = epoch(dataset, start_batch=1)
    assert len(resumed) == 1
    assert torch.equal(resumed[0][0], whole[1][0]) and torch.equal(resumed[0][1], whole[1][1])
    # Another epoch draws other crops.
    other = list(
        dataset.batches(EpochSampler(8, seed=3, epoch=2, batch_size=3, drop_last=True), 3, "cpu")
    )
    assert not torch.equal(other[0][0], whole[0][0])


def test_ranks_see_the_images_of_an_uninterrupted_run(folder):
    """An image's crop depends on (seed, epoch, index) only, not on batch or rank."""
    dataset = JpegFolderOnDevice(folder, imagenet_preprocessing(32))
    single = EpochSampler(8, seed=3, epoch=1, batch_size=1, drop_last=True)
    by_index = {}
    for index, (images, _) in zip(single.indices(), dataset.batches(single, 1, "cpu"), strict=True):
        by_index[index] = images[0]
    for rank in (0, 1):
        shard = EpochSampler(
            8, seed=3, epoch=1, batch_size=2, drop_last=True, rank=rank, world_size=2
        )
        images = torch.cat([batch for batch, _ in dataset.batches(shard, 2, "cpu")])
        assert torch.equal(images, torch.stack([by_index[i] for i in shard.indices()]))


# --- Errors -------------------------------------------------------------------------------------


def test_a_corrupt_file_raises_an_error_naming_it(folder, tmp_path):
    corrupt = tmp_path / "train" / "class0" / "corrupt.JPEG"
    data = open(folder[0][0], "rb").read()
    corrupt.write_bytes(data[: len(data) // 3])  # a JPEG header, the rest cut off
    dataset = JpegFolderOnDevice(folder[:2] + [(str(corrupt), 0)], imagenet_preprocessing(32))
    with pytest.raises(MobileNetsError, match="corrupt.JPEG"):
        list(dataset.batches(EpochSampler(3, shuffle=False), 3, "cpu"))
    garbage = tmp_path / "garbage.JPEG"
    garbage.write_bytes(bytes(range(256)))
    dataset = JpegFolderOnDevice([(str(garbage), 0)], imagenet_preprocessing(32))
    with pytest.raises(MobileNetsError, match=r"cannot decode image .*garbage\.JPEG"):
        list(dataset.batches(EpochSampler(1), 1, "cpu"))
    missing = JpegFolderOnDevice([(str(tmp_path / "gone.JPEG"), 0)], imagenet_preprocessing(32))
    with pytest.raises(MobileNetsError, match="cannot read image .*gone.JPEG"):
        list(missing.batches(EpochSampler(1), 1, "cpu"))


def test_bad_settings_name_the_value():
    with pytest.raises(MobileNetsError, match="channels=1"):
        JpegFolderOnDevice([], imagenet_preprocessing(32, channels=1))
    with pytest.raises(MobileNetsError, match="resize=20"):
        JpegFolderOnDevice([], imagenet_preprocessing(32).replace(resize=20), train=False)
    with pytest.raises(MobileNetsError, match="batch_size=0"):
        JpegFolderOnDevice([], imagenet_preprocessing(32)).batches(EpochSampler(0), 0, "cpu")
