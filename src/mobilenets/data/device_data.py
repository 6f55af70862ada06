"""Classification training data held on the training device, augmented there in batches.

For datasets that fit in memory ([`TensorImages`][mobilenets.data.common.TensorImages]:
Fashion-MNIST, CIFAR-10/100, synthetic), a GPU outruns the per-image PIL/torchvision pipeline of
a DataLoader. [`DeviceImages`][mobilenets.data.device_data.DeviceImages] moves the uint8 images
and labels to the device once and augments each batch there with tensor operations:
pad-and-crop, horizontal flip, TrivialAugment (all 14 operations of torchvision's
``TrivialAugmentWide`` with its magnitude bins), float conversion, normalisation, random erasing.

Its randomness comes from a counter-based stream, [`uniform`][mobilenets.data.device_data.uniform]:
every draw is a hash of (run seed, epoch, image index, draw number), computed with integer tensor
ops that give the same numbers on a CPU and on CUDA. An image's augmentation therefore depends
neither on the batch it lands in nor on its position there, nor on the global RNG: a resumed run
and each rank of a torchrun job see exactly what an uninterrupted single process would.

This is a different augmentation stream from the DataLoader path of
[`mobilenets.data.transforms`][mobilenets.data.transforms]: the same recipe (the same
probabilities, ranges and magnitude bins) but other random numbers, and geometric operations
interpolated by ``grid_sample`` instead of torchvision's per-image kernels. A run is exactly
reproducible on either path, not across them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.preprocessing import Preprocessing
from mobilenets.data.common import EpochSampler, TensorImages

# --- The random stream ---------------------------------------------------------------------------

MASK32 = 0xFFFF_FFFF
# Multipliers of the mixer: odd, and below 2**31 so that a 32-bit value times one stays below
# 2**63 and int64 arithmetic never overflows (on CUDA as on a CPU). The shifts and the first
# multiplier are those of Chris Wellons' "lowbias32" hash; the others are odd constants of the
# same size.
MIXERS = (0x7FEB352D, 0x68E31DA5, 0x5BD1E995)
# Added to each field before it is folded in, so that zero fields do not hash to zero.
FIELD_SALT = 0x61C88647
FIELD_SCALE = 0x2545F491


def mix32(x):
    """A 32-bit integer hash (three multiply-xorshift rounds): a Python int or an int64 tensor
    of values in [0, 2**32) in, the same kind out."""
    x = x & MASK32
    for multiplier in MIXERS:
        x = x ^ (x >> 16)
        x = (x * multiplier) & MASK32
    return x ^ (x >> 15)


def fold(state, value):
    """``state`` with one more field hashed in (both Python ints or int64 tensors)."""
    return mix32(state ^ (((value & MASK32) * FIELD_SCALE + FIELD_SALT) & MASK32))


def uniform(seed: int, epoch: int, index: torch.Tensor, draws: int) -> torch.Tensor:
    """Uniform numbers in [0, 1): row ``k`` holds draws ``0 .. draws - 1`` of image
    ``index[k]``, each a pure function of (seed, epoch, index, draw number).

    float32 with 24 random bits each, on ``index``'s device; no RNG state is read or changed.
    """
    key = fold(fold(fold(0, seed), seed >> 32), epoch)  # the run and epoch, as Python ints
    rows = fold(torch.full_like(index, key, dtype=torch.int64), index.long())
    numbers = torch.arange(draws, device=index.device, dtype=torch.int64)
    bits = fold(rows[:, None], numbers[None, :])
    return (bits >> 8).to(torch.float32) * 2.0**-24


# --- The augmentation ----------------------------------------------------------------------------

# Draw numbers of each random choice, fixed so that a choice keeps its numbers whatever else is on.
CROP_Y, CROP_X, FLIP, OP, MAGNITUDE_BIN, SIGN, ERASE = range(7)
ERASE_ATTEMPTS = 10  # torchvision's RandomErasing tries 10 rectangles before giving up
ERASE_FIRST = ERASE + 1  # 4 draws per attempt: area, log aspect ratio, top, left
DRAWS = ERASE_FIRST + 4 * ERASE_ATTEMPTS
ERASE_SCALE, ERASE_RATIO = (0.02, 0.33), (0.3, 3.3)  # torchvision RandomErasing's defaults

# TrivialAugmentWide's space, in torchvision's order: (name, magnitude per bin or None, signed).
MAGNITUDE_BINS = 31
TRIVIAL_OPS = (
    ("identity", None, False),
    ("shear_x", torch.linspace(0.0, 0.99, MAGNITUDE_BINS), True),
    ("shear_y", torch.linspace(0.0, 0.99, MAGNITUDE_BINS), True),
    ("translate_x", torch.linspace(0.0, 32.0, MAGNITUDE_BINS), True),
    ("translate_y", torch.linspace(0.0, 32.0, MAGNITUDE_BINS), True),
    ("rotate", torch.linspace(0.0, 135.0, MAGNITUDE_BINS), True),
    ("brightness", torch.linspace(0.0, 0.99, MAGNITUDE_BINS), True),
    ("color", torch.linspace(0.0, 0.99, MAGNITUDE_BINS), True),
    ("contrast", torch.linspace(0.0, 0.99, MAGNITUDE_BINS), True),
    ("sharpness", torch.linspace(0.0, 0.99, MAGNITUDE_BINS), True),
    ("posterize", 8 - (torch.arange(MAGNITUDE_BINS) / ((MAGNITUDE_BINS - 1) / 6)).round(), False),
    ("solarize", torch.linspace(1.0, 0.0, MAGNITUDE_BINS), False),
    ("autocontrast", None, False),
    ("equalize", None, False),
)
GRID_MODES = {"nearest": "nearest", "bilinear": "bilinear", "bicubic": "bicubic"}
# ITU-R 601-2 luma, as torchvision's rgb_to_grayscale and PIL's "L" conversion.
LUMA = (0.2989, 0.587, 0.114)


class DeviceImages:
    """A split's uint8 images (N, C, H, W) and labels on one device, augmented there in batches.

    The recipe is ``transforms.train_transform``'s for small images: resize to
    ``preprocessing.resolution`` if the images have another side, zero-pad by ``pad`` and crop
    back at a random offset, flip horizontally with probability ``flip``, one TrivialAugmentWide
    operation when ``trivial``, scale to [0, 1], normalise with the preprocessing's mean and std,
    and erase a random rectangle to 0 (the mean colour) with probability ``random_erasing``.
    ``pad=None`` pads by ``max(1, side // 8)`` as the DataLoader path does; 0 turns the crop off.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        preprocessing: Preprocessing,
        *,
        pad: int | None = None,
        flip: float = 0.5,
        trivial: bool = False,
        random_erasing: float = 0.0,
        channels_last: bool = False,
        device: torch.device | str = "cpu",
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise MobileNetsError(
                f"images must be a uint8 tensor (N, C, H, W), got {images.dtype} of shape "
                f"{tuple(images.shape)}"
            )
        if images.shape[1] != preprocessing.channels or len(labels) != len(images):
            raise MobileNetsError(
                f"{len(images)} images of {images.shape[1]} channels and {len(labels)} labels "
                f"do not fit a preprocessing of {preprocessing.channels} channels"
            )
        for name, value in (("flip", flip), ("random_erasing", random_erasing)):
            if not 0 <= value <= 1:
                raise MobileNetsError(f"{name} must be a probability in [0, 1], got {value!r}")
        side = preprocessing.resolution
        self.pad = max(1, side // 8) if pad is None else pad
        if self.pad < 0:
            raise MobileNetsError(f"pad must be >= 0 or None, got {pad!r}")
        if preprocessing.interpolation not in GRID_MODES:
            raise MobileNetsError(
                f"interpolation {preprocessing.interpolation!r} is not one of "
                f"{', '.join(GRID_MODES)} (the modes of grid_sample)"
            )
        self.preprocessing, self.flip, self.trivial = preprocessing, flip, trivial
        self.random_erasing, self.channels_last = random_erasing, channels_last
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, torch.int64)

    @classmethod
    def from_tensor_images(
        cls,
        dataset: TensorImages,
        preprocessing: Preprocessing,
        *,
        augment: str,
        random_erasing: float,
        channels_last: bool,
        device: torch.device | str,
    ) -> DeviceImages:
        """The device twin of a DataLoader split that ``train_transform(preprocessing, augment,
        random_erasing, small=True)`` would augment."""
        if not isinstance(dataset, TensorImages):
            raise MobileNetsError(
                f"device data needs in-memory images (TensorImages), got {type(dataset).__name__}"
            )
        if augment not in ("basic", "trivial"):
            raise MobileNetsError(f"augment must be one of basic, trivial, got {augment!r}")
        return cls(
            dataset.images,
            dataset.labels,
            preprocessing,
            trivial=augment == "trivial",
            random_erasing=random_erasing,
            channels_last=channels_last,
            device=device,
        )

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device | str) -> DeviceImages:
        """Move the images and labels to ``device`` (nothing is copied if they are there)."""
        self.device = torch.device(device)
        self.images, self.labels = self.images.to(self.device), self.labels.to(self.device)
        return self

    def batches(
        self, sampler: EpochSampler, batch_size: int, device: torch.device | str
    ) -> DeviceBatches:
        """The epoch ``sampler`` describes (its order, this rank's share, from its start batch),
        as ``(images, labels)`` batches of ``batch_size`` on ``device``."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise MobileNetsError(f"batch_size must be a positive integer, got {batch_size!r}")
        if torch.device(device) != self.device:
            self.to(device)
        return DeviceBatches(self, sampler.indices(), batch_size, sampler.seed, sampler.epoch)

    def batch(
        self, indices: torch.Tensor, seed: int, epoch: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The augmented images (B, C, side, side), float32 normalised, and int64 labels of
        ``indices`` in epoch ``epoch`` of a run seeded ``seed``."""
        indices = indices.to(self.device, torch.int64)
        draws = uniform(seed, epoch, indices, DRAWS)
        images = self.images[indices]
        side = self.preprocessing.resolution
        if images.shape[-2:] != (side, side):
            images = TF.resize(
                images,
                [side, side],
                TF.InterpolationMode(self.preprocessing.interpolation),
                antialias=True,
            )
        if self.pad > 0:
            images = pad_and_crop(images, self.pad, draws[:, CROP_Y], draws[:, CROP_X])
        if self.flip > 0:
            flipped = (draws[:, FLIP] < self.flip)[:, None, None, None]
            images = torch.where(flipped, images.flip(-1), images)
        if self.trivial:
            images = trivial_augment(images, draws, self.preprocessing.interpolation)
        mean = images.new_tensor(self.preprocessing.mean, dtype=torch.float32)[:, None, None]
        std = images.new_tensor(self.preprocessing.std, dtype=torch.float32)[:, None, None]
        images = (images.to(torch.float32) / 255 - mean) / std
        if self.random_erasing > 0:
            erased = draws[:, ERASE] < self.random_erasing
            rectangle = erasing_mask(draws, images.shape[-2:])
            images = images.masked_fill(rectangle & erased[:, None, None, None], 0.0)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, self.labels[indices]


class DeviceBatches:
    """One epoch's batches of a [`DeviceImages`][mobilenets.data.device_data.DeviceImages], in
    the order of a sampler's indices; ``len`` is the number of batches."""

    def __init__(
        self, dataset: DeviceImages, indices: list[int], batch_size: int, seed: int, epoch: int
    ) -> None:
        self.dataset, self.batch_size, self.seed, self.epoch = dataset, batch_size, seed, epoch
        self.indices = torch.tensor(indices, dtype=torch.int64, device=dataset.device)

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for chunk in self.indices.split(self.batch_size):
            yield self.dataset.batch(chunk, self.seed, self.epoch)


# --- The operations, each on a batch with per-image parameters -----------------------------------


def pad_and_crop(
    images: torch.Tensor, pad: int, draw_y: torch.Tensor, draw_x: torch.Tensor
) -> torch.Tensor:
    """Zero-pad by ``pad`` on every side and crop the original size back at offsets
    ``floor(draw * (2 * pad + 1))``: torchvision's RandomCrop(side, padding=pad)."""
    batch, channels, height, width = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    top = (draw_y * (2 * pad + 1)).long().clamp_(max=2 * pad)
    left = (draw_x * (2 * pad + 1)).long().clamp_(max=2 * pad)
    rows = top[:, None] + torch.arange(height, device=images.device)
    cols = left[:, None] + torch.arange(width, device=images.device)
    rows = rows[:, None, :, None].expand(batch, channels, height, width + 2 * pad)
    images = padded.gather(2, rows)
    return images.gather(3, cols[:, None, None, :].expand(batch, channels, height, width))


def erasing_mask(draws: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The rectangle RandomErasing picks for each image, as a (B, 1, H, W) mask: the first of
    10 tries whose area (2% to 33% of the image) and aspect ratio (0.3 to 3.3, log-uniform) fit;
    no rectangle when none does."""
    height, width = size
    area = height * width
    tries = draws[:, ERASE_FIRST:].reshape(-1, ERASE_ATTEMPTS, 4)
    erase_area = area * (ERASE_SCALE[0] + tries[..., 0] * (ERASE_SCALE[1] - ERASE_SCALE[0]))
    low, high = math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1])
    aspect = torch.exp(low + tries[..., 1] * (high - low))
    h = torch.sqrt(erase_area * aspect).round().long()
    w = torch.sqrt(erase_area / aspect).round().long()
    fits = (h < height) & (w < width)
    first = fits.to(torch.int8).argmax(1, keepdim=True)  # the first True; 0 when none
    h, w = h.gather(1, first)[:, 0], w.gather(1, first)[:, 0]
    top = (tries[..., 2].gather(1, first)[:, 0] * (height - h + 1)).long()
    left = (tries[..., 3].gather(1, first)[:, 0] * (width - w + 1)).long()
    rows = torch.arange(height, device=draws.device)[None, :]
    cols = torch.arange(width, device=draws.device)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + h)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + w)[:, None])
    mask = in_rows[:, :, None] & in_cols[:, None, :] & fits.any(1)[:, None, None]
    return mask[:, None]


def trivial_augment(images: torch.Tensor, draws: torch.Tensor, interpolation: str) -> torch.Tensor:
    """One TrivialAugmentWide operation per uint8 image: the operation, its magnitude bin and
    (for signed ones) the sign drawn uniformly, as torchvision draws them.

    Every operation runs on the whole batch and each image keeps its own operation's result:
    13 times the work of the chosen images alone, small for the images held in memory (at most
    64 px), and no read from the device (selecting the chosen images would need their count on
    the host, a wait for the GPU per operation and batch)."""
    op = (draws[:, OP] * len(TRIVIAL_OPS)).long().clamp_(max=len(TRIVIAL_OPS) - 1)
    bins = (draws[:, MAGNITUDE_BIN] * MAGNITUDE_BINS).long().clamp_(max=MAGNITUDE_BINS - 1)
    negative = draws[:, SIGN] < 0.5
    out = images
    for number, (name, magnitudes, signed) in enumerate(TRIVIAL_OPS):
        if name == "identity":
            continue
        magnitude = None
        if magnitudes is not None:
            magnitude = magnitudes.to(images.device)[bins]
            if signed:
                magnitude = torch.where(negative, -magnitude, magnitude)
        chosen = (op == number)[:, None, None, None]
        out = torch.where(chosen, apply_op(name, images, magnitude, interpolation), out)
    return out


def apply_op(
    name: str, images: torch.Tensor, magnitude: torch.Tensor | None, interpolation: str
) -> torch.Tensor:
    """TrivialAugmentWide's operation ``name`` on uint8 images, image k with ``magnitude[k]``."""
    if name == "autocontrast":
        return TF.autocontrast(images)
    if name == "equalize":
        return TF.equalize(images)
    if name == "posterize":
        dropped = 8 - magnitude.long()  # keep the top ``magnitude`` bits of each byte
        keep = torch.bitwise_left_shift(torch.full_like(dropped, 0xFF), dropped) & 0xFF
        return images & keep.to(torch.uint8)[:, None, None, None]
    if name == "solarize":
        threshold = (255 * magnitude)[:, None, None, None]
        return torch.where(images >= threshold, 255 - images, images)
    if name in ("shear_x", "shear_y", "translate_x", "translate_y", "rotate"):
        result = affine(images.to(torch.float32), name, magnitude, GRID_MODES[interpolation])
    else:
        result = enhance(images.to(torch.float32), name, 1.0 + magnitude[:, None, None, None])
    return result.round_().clamp_(0, 255).to(torch.uint8)


def enhance(images: torch.Tensor, name: str, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ImageEnhance operations on float images in [0, 255]: blend with a degenerate image
    by ``factor`` (1 leaves the image, 0 gives the degenerate one)."""
    if name == "brightness":  # degenerate: black
        return images * factor
    if name == "color":  # degenerate: the grey image; a one-channel image has no colour
        if images.shape[1] == 1:
            return images
        return blend(images, grey(images), factor)
    if name == "contrast":  # degenerate: the mean grey level
        return blend(images, grey(images).mean((1, 2, 3), keepdim=True), factor)
    if name == "sharpness":  # degenerate: smoothed by [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13
        return blend(images, smoothed(images), factor)
    raise MobileNetsError(f"unknown enhance operation {name!r}")


def blend(images: torch.Tensor, degenerate: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (degenerate + factor * (images - degenerate)).clamp_(0, 255)


def grey(images: torch.Tensor) -> torch.Tensor:
    if images.shape[1] == 1:
        return images
    red, green, blue = images.unbind(1)
    return (LUMA[0] * red + LUMA[1] * green + LUMA[2] * blue)[:, None]


def smoothed(images: torch.Tensor) -> torch.Tensor:
    """PIL's SMOOTH filter inside the border, rounded as on uint8; border pixels unchanged.
    Summed from shifted views rather than a convolution, so an image's result is the same in
    any batch."""
    height, width = images.shape[-2:]
    total = 4 * images[..., 1:-1, 1:-1]
    for dy in range(3):
        for dx in range(3):
            total = total + images[..., dy : height - 2 + dy, dx : width - 2 + dx]
    out = images.clone()
    out[..., 1:-1, 1:-1] = (total / 13).round_()
    return out


def affine(images: torch.Tensor, name: str, magnitude: torch.Tensor, mode: str) -> torch.Tensor:
    """A shear, translation or rotation per image, black outside, sampled with ``grid_sample``.

    Each output pixel centre (x, y), in pixels from the top-left corner, reads the input at
    A (x, y) + b: shears as the official AutoAugment (x + m y, about the corner), translations by
    whole pixels, rotations by m degrees about the centre."""
    batch, _, height, width = images.shape
    device = images.device
    ones, zeros = torch.ones_like(magnitude), torch.zeros_like(magnitude)
    a00, a01, a10, a11, b0, b1 = ones, zeros, zeros, ones, zeros, zeros
    if name == "shear_x":
        a01 = magnitude
    elif name == "shear_y":
        a10 = magnitude
    elif name == "translate_x":
        b0 = -magnitude.trunc()
    elif name == "translate_y":
        b1 = -magnitude.trunc()
    else:  # rotate about the centre: input = centre + R (output - centre)
        angle = torch.deg2rad(magnitude)
        cos, sin = torch.cos(angle), torch.sin(angle)
        a00, a01, a10, a11 = cos, -sin, sin, cos
        b0 = width / 2 - cos * (width / 2) + sin * (height / 2)
        b1 = height / 2 - sin * (width / 2) - cos * (height / 2)
    ys = torch.arange(height, device=device, dtype=torch.float32)[None, :, None] + 0.5
    xs = torch.arange(width, device=device, dtype=torch.float32)[None, None, :] + 0.5

    def per_image(value: torch.Tensor) -> torch.Tensor:
        return value[:, None, None]

    source_x = per_image(a00) * xs + per_image(a01) * ys + per_image(b0)
    source_y = per_image(a10) * xs + per_image(a11) * ys + per_image(b1)
    # grid_sample's coordinates: -1 and 1 are the outer edges (align_corners=False).
    grid = torch.stack([2 * source_x / width - 1, 2 * source_y / height - 1], dim=-1)
    return F.grid_sample(
        images,
        grid.expand(batch, height, width, 2),
        mode=mode,
        padding_mode="zeros",
        align_corners=False,
    )
