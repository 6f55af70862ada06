"""Device data: the counter-based random stream, batch augmentation that does not depend on the
batch, exact resume and rank shards, and each augmentation on a hand-made image."""

from __future__ import annotations

import pytest
import torch

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.preprocessing import Preprocessing
from mobilenets.data.common import EpochSampler, ImageFiles, TensorImages
from mobilenets.data.device_data import DeviceImages, apply_op, uniform
from mobilenets.data.transforms import eval_transform

PREPROCESSING = Preprocessing(8, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3), 3)


def images(count: int = 64, side: int = 8, channels: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(
        0, 256, (count, channels, side, side), generator=generator, dtype=torch.uint8
    )


def dataset(count: int = 64, **options) -> DeviceImages:
    # Labels are the indices, so that a batch's labels say which images it holds.
    return DeviceImages(images(count), torch.arange(count), PREPROCESSING, **options)


FULL = dict(trivial=True, random_erasing=0.5)
NOTHING = dict(pad=0, flip=0.0)


# --- The random stream --------------------------------------------------------------------------


def test_uniform_is_a_pure_function_of_seed_epoch_index_and_draw():
    index = torch.arange(1000)
    state = torch.get_rng_state()
    first = uniform(3, 1, index, 8)
    assert torch.equal(torch.get_rng_state(), state)  # no global RNG drawn from
    assert first.shape == (1000, 8) and first.dtype == torch.float32
    assert torch.equal(uniform(3, 1, index, 8), first)
    for other in (uniform(4, 1, index, 8), uniform(3, 2, index, 8), uniform(3, 1, index + 1, 8)):
        assert (other == first).float().mean() < 0.001
    assert (first[:, 0] == first[:, 1]).float().mean() < 0.001  # draws of one image differ
    # An image's draws do not depend on what else is asked for with it, nor where.
    subset = torch.tensor([917, 4, 500])
    assert torch.equal(uniform(3, 1, subset, 8), first[subset])
    assert torch.equal(uniform(3, 1, subset, 3), first[subset, :3])
    # Seeds beyond 32 bits and negative ones are distinct seeds too.
    assert not torch.equal(uniform(3 + 2**40, 1, index, 8), first)
    assert not torch.equal(uniform(-3, 1, index, 8), first)


def test_uniform_draws_are_uniform_and_uncorrelated():
    draws = uniform(0, 0, torch.arange(100_000), 2)
    assert ((draws >= 0) & (draws < 1)).all()
    values = draws[:, 0].double()
    # The mean of 100k uniforms has a standard deviation of 0.0009, the variance one of 0.0002.
    assert abs(values.mean().item() - 0.5) < 0.004
    assert abs(values.var().item() - 1 / 12) < 0.001
    counts = torch.histc(values, bins=10, min=0, max=1)
    assert (counts - 10_000).abs().max() < 500  # 5 standard deviations of a bin count
    correlation = torch.corrcoef(draws.double().T)[0, 1]
    assert abs(correlation.item()) < 0.015
    neighbours = torch.corrcoef(torch.stack([values[:-1], values[1:]]))[0, 1]
    assert abs(neighbours.item()) < 0.015


# --- Batches ------------------------------------------------------------------------------------


def test_a_batch_equals_its_images_augmented_one_by_one():
    data = dataset(**FULL)
    order = torch.randperm(64, generator=torch.Generator().manual_seed(1))
    batch, labels = data.batch(order, seed=5, epoch=2)
    singles = torch.cat([data.batch(order[k : k + 1], seed=5, epoch=2)[0] for k in range(64)])
    assert torch.equal(batch, singles) and torch.equal(labels, order)
    halves = torch.cat([data.batch(order[32:], 5, 2)[0], data.batch(order[:32], 5, 2)[0]])
    assert torch.equal(halves, torch.cat([batch[32:], batch[:32]]))
    assert not torch.equal(data.batch(order, seed=5, epoch=3)[0], batch)  # a new epoch's draws


def test_batches_follow_the_sampler_and_a_resumed_epoch_is_the_tail_of_the_full_one():
    data = dataset(**FULL)
    sampler = EpochSampler(64, seed=7, epoch=1, batch_size=8, drop_last=True)
    full = list(data.batches(sampler, 8, "cpu"))
    assert len(data.batches(sampler, 8, "cpu")) == len(full) == 8
    order = torch.tensor(sampler.indices())
    assert torch.equal(torch.cat([labels for _, labels in full]), order)
    sampler.start_batch = 3
    resumed = data.batches(sampler, 8, "cpu")
    assert len(resumed) == 5
    for (images, labels), (expected, expected_labels) in zip(resumed, full[3:], strict=True):
        assert torch.equal(images, expected) and torch.equal(labels, expected_labels)
    # The last incomplete batch is kept when the sampler keeps it (evaluation order).
    kept = data.batches(EpochSampler(20, shuffle=False, batch_size=8), 8, "cpu")
    assert [len(labels) for _, labels in kept] == [8, 8, 4] and len(kept) == 3


def test_two_ranks_take_disjoint_shards_that_cover_the_epoch():
    data = dataset(**FULL)
    whole = EpochSampler(64, seed=7, epoch=1, batch_size=8, drop_last=True)
    reference = dict(
        zip(whole.indices(), torch.cat([b for b, _ in data.batches(whole, 8, "cpu")]), strict=True)
    )
    seen = []
    for rank in (0, 1):
        sampler = EpochSampler(
            64, seed=7, epoch=1, batch_size=8, drop_last=True, rank=rank, world_size=2
        )
        for images, labels in data.batches(sampler, 8, "cpu"):
            seen += labels.tolist()
            # An image looks the same on either rank as in a single process.
            pairs = zip(images, labels, strict=True)
            assert all(torch.equal(image, reference[int(index)]) for image, index in pairs)
    assert sorted(seen) == list(range(64))


def test_output_is_normalised_float_in_the_asked_memory_format_with_int64_labels():
    for channels_last in (False, True):
        data = dataset(channels_last=channels_last, **FULL)
        batch, labels = data.batch(torch.arange(16), 0, 0)
        assert batch.shape == (16, 3, 8, 8) and batch.dtype == torch.float32
        assert batch.is_contiguous(memory_format=torch.channels_last) == channels_last
        assert labels.dtype == torch.int64 and labels.device == batch.device
    resized = DeviceImages(images(4, side=6), torch.arange(4), PREPROCESSING)
    assert resized.batch(torch.arange(4), 0, 0)[0].shape == (4, 3, 8, 8)


# --- Each augmentation --------------------------------------------------------------------------


def test_without_augmentation_the_output_is_the_evaluation_transform():
    data = dataset(**NOTHING)
    batch, _ = data.batch(torch.arange(64), 0, 0)
    mean = torch.tensor(PREPROCESSING.mean)[:, None, None]
    std = torch.tensor(PREPROCESSING.std)[:, None, None]
    assert torch.allclose(batch, (data.images.float() / 255 - mean) / std, atol=1e-6)
    reference = eval_transform(PREPROCESSING)
    assert all(torch.allclose(batch[k], reference(data.images[k]), atol=1e-5) for k in range(64))


def test_flip_mirrors_and_crop_shifts_within_the_zero_padding():
    plain, _ = dataset(**NOTHING).batch(torch.arange(64), 0, 0)
    flipped, _ = dataset(pad=0, flip=1.0).batch(torch.arange(64), 0, 0)
    assert torch.equal(flipped, plain.flip(-1))
    cropped, _ = dataset(pad=2, flip=0.0).batch(torch.arange(64), 0, 0)
    black = -torch.tensor(PREPROCESSING.mean) / torch.tensor(PREPROCESSING.std)
    padded = black[None, :, None, None].expand(64, 3, 12, 12).clone()
    padded[..., 2:10, 2:10] = plain
    offsets = set()
    for k in range(64):
        matches = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(cropped[k], padded[k, :, dy : dy + 8, dx : dx + 8])
        ]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) > 15  # of the 25 offsets, most turn up in 64 draws


def test_random_erasing_zeroes_one_rectangle_of_two_to_33_percent():
    white = torch.full((200, 3, 16, 16), 255, dtype=torch.uint8)
    preprocessing = PREPROCESSING.replace(resolution=16)
    erased, _ = DeviceImages(
        white, torch.arange(200), preprocessing, pad=0, flip=0.0, random_erasing=1.0
    ).batch(torch.arange(200), 0, 0)
    assert (erased >= 0).all()
    for image in erased:
        zero = (image == 0).all(0)
        assert (image == 0).any(0).eq(zero).all()  # every channel erased alike
        rows, cols = zero.any(1).nonzero()[:, 0], zero.any(0).nonzero()[:, 0]
        assert len(rows) > 0, "RandomErasing with p=1 finds a rectangle in 16x16"
        box = zero[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        assert box.all() and int(zero.sum()) == box.numel()
        assert 0.02 * 256 - 8 <= box.numel() <= 0.33 * 256 + 8  # rounding of height and width
    sometimes = DeviceImages(
        white, torch.arange(200), preprocessing, pad=0, flip=0.0, random_erasing=0.5
    ).batch(torch.arange(200), 0, 0)[0]
    share = (sometimes == 0).flatten(1).any(1).float().mean().item()
    assert 0.35 < share < 0.65


@pytest.mark.parametrize(
    "name, magnitude",
    [
        ("brightness", 0.0),
        ("color", 0.0),
        ("contrast", 0.0),
        ("sharpness", 0.0),
        ("posterize", 8.0),
        ("shear_x", 0.0),
        ("shear_y", 0.0),
        ("translate_x", 0.0),
        ("translate_y", 0.0),
        ("rotate", 0.0),
    ],
)
def test_trivial_augment_operations_at_their_neutral_magnitude_are_the_identity(name, magnitude):
    batch = images(4)
    assert torch.equal(apply_op(name, batch, torch.full((4,), magnitude), "bilinear"), batch)


def test_trivial_augment_operations_do_what_they_say():
    batch = images(4)
    magnitude = torch.tensor([90.0, -90.0, 3.0, -3.0])
    rotated = apply_op("rotate", batch[:2], magnitude[:2], "bilinear")
    assert torch.equal(rotated[0], batch[0].rot90(1, (1, 2)))  # counter-clockwise
    assert torch.equal(rotated[1], batch[1].rot90(-1, (1, 2)))
    moved = apply_op("translate_x", batch[2:], magnitude[2:], "bilinear")
    assert torch.equal(moved[0, ..., 3:], batch[2, ..., :-3]) and (moved[0, ..., :3] == 0).all()
    assert torch.equal(moved[1, ..., :-3], batch[3, ..., 3:]) and (moved[1, ..., -3:] == 0).all()
    posterized = apply_op("posterize", batch, torch.full((4,), 4.0), "bilinear")
    assert torch.equal(posterized, batch & 0xF0)
    solarized = apply_op("solarize", batch, torch.full((4,), 0.5), "bilinear")
    assert torch.equal(solarized, torch.where(batch >= 127.5, 255 - batch, batch))
    # Solarize's weakest bin (threshold 255) still inverts white, as torchvision's does.
    weakest = apply_op("solarize", batch, torch.full((4,), 1.0), "bilinear")
    assert torch.equal(weakest, torch.where(batch == 255, 0, batch).to(torch.uint8))
    darker = apply_op("brightness", batch, torch.full((4,), -0.5), "bilinear")
    assert torch.equal(darker, (batch.float() * 0.5).round().to(torch.uint8))
    stretched = apply_op("autocontrast", batch // 2 + 10, None, "bilinear")
    # torchvision's autocontrast truncates to uint8: the brightest pixel lands on 254 or 255.
    assert stretched.amin((2, 3)).eq(0).all() and stretched.amax((2, 3)).ge(254).all()


def test_trivial_augment_draws_every_operation_and_sometimes_changes_the_image():
    plain, _ = dataset(512, **NOTHING).batch(torch.arange(512), 0, 0)
    augmented, _ = dataset(512, pad=0, flip=0.0, trivial=True).batch(torch.arange(512), 0, 0)
    changed = (augmented != plain).flatten(1).any(1).float().mean().item()
    # Identity, and magnitude-0 bins, leave an image; the other 12 of 14 operations mostly not.
    assert 0.7 < changed < 0.97


# --- Errors -------------------------------------------------------------------------------------


def test_bad_inputs_are_refused_naming_the_value():
    with pytest.raises(MobileNetsError, match="uint8 tensor"):
        DeviceImages(images().float(), torch.arange(64), PREPROCESSING)
    with pytest.raises(MobileNetsError, match="3 channels and 10 labels"):
        DeviceImages(images(), torch.arange(10), PREPROCESSING)
    with pytest.raises(MobileNetsError, match="random_erasing must be a probability"):
        dataset(random_erasing=1.5)
    with pytest.raises(MobileNetsError, match="interpolation 'lanczos'"):
        DeviceImages(images(), torch.arange(64), PREPROCESSING.replace(interpolation="lanczos"))
    options = dict(random_erasing=0, channels_last=False, device="cpu")
    with pytest.raises(MobileNetsError, match="needs in-memory images .* got ImageFiles"):
        DeviceImages.from_tensor_images(ImageFiles([]), PREPROCESSING, augment="basic", **options)
    in_memory = TensorImages(images(), torch.arange(64))
    with pytest.raises(MobileNetsError, match="augment must be one of basic, trivial, got 'auto'"):
        DeviceImages.from_tensor_images(in_memory, PREPROCESSING, augment="auto", **options)
    with pytest.raises(MobileNetsError, match="batch_size must be a positive integer, got 0"):
        dataset().batches(EpochSampler(64), 0, "cpu")
