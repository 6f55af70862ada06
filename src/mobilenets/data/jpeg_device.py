"""JPEG folders decoded and augmented on the training device: the GPU input pipeline.

[`JpegFolderOnDevice`][mobilenets.data.jpeg_device.JpegFolderOnDevice] reads the files of an
ImageNet-layout folder (an [`ImageFiles`][mobilenets.data.common.ImageFiles]' samples) on the CPU,
a thread pool reading one batch ahead, and decodes each batch in one call to torchvision's
``decode_jpeg``: nvJPEG on a CUDA device, libjpeg-turbo on the CPU. The random-resized crop, the
flip and the normalisation then run on the device in batch. What the CPU path does per image
with PIL and ``train_transform`` costs a few CPU cores per GPU at ImageNet sizes; here the CPU
only reads files and draws a few numbers per image.

The random draws are the CPU path's: each image's crop box and flip come from a generator seeded
with [`sample_seed`][mobilenets.data.common.sample_seed]``(seed, epoch, index)``, drawn in the
order and with the calls of torchvision's ``RandomResizedCrop`` and ``RandomHorizontalFlip``, so
the same seed crops the same box and flips the same way on either path, and a resumed run or
another rank sees what an uninterrupted run does. The pixels differ slightly (see
``docs/training.md``): the crop is resized by ``torchvision.ops.roi_align``, bilinear with
several samples per output pixel when it shrinks, rather than by torchvision's antialiased
resize, and stays in float instead of being rounded to uint8 before the normalisation.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from torchvision.io import ImageReadMode, decode_image, decode_jpeg
from torchvision.ops import roi_align
from torchvision.transforms.v2 import functional as TF

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.preprocessing import Preprocessing
from mobilenets.data.common import EpochSampler, ImageFiles, sample_seed

# torchvision.transforms.RandomResizedCrop's defaults, which train_transform uses.
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
CROP_TRIES = 10
# File reads wait on the disk, not the CPU: more threads than cores keep a network file system
# or a cold page cache busy.
READ_THREADS = 8
JPEG_MAGIC = b"\xff\xd8\xff"
# torchvision 0.29 deprecates its image decoders for TorchCodec's and warns on every call.
DECODER_DEPRECATION = "The image decoding and encoding capabilities of TorchVision"

Box = tuple[float, float, float, float]  # top, left, height, width in source pixels


# --- Where to crop -------------------------------------------------------------------------------


def random_resized_box(
    height: int,
    width: int,
    generator: torch.Generator,
    scale: tuple[float, float] = CROP_SCALE,
    ratio: tuple[float, float] = CROP_RATIO,
) -> tuple[int, ...]:
    """(top, left, height, width) of a random crop, drawn as torchvision's ``RandomResizedCrop``
    draws it (same calls, same order) but from ``generator``: an area fraction in ``scale`` and
    a log-uniform aspect ratio in ``ratio``, ten tries to fit, then the center crop of the
    image clamped to ``ratio``."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(CROP_TRIES):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        log_aspect = torch.empty(1).uniform_(
            float(log_ratio[0]), float(log_ratio[1]), generator=generator
        )
        aspect = torch.exp(log_aspect).item()
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def center_box(height: int, width: int, preprocessing: Preprocessing) -> Box:
    """The evaluation crop in source pixels: ``eval_transform``'s resize of the shorter side to
    ``preprocessing.resize`` then center crop of ``resolution`` (or a resize of the whole image
    to ``resolution`` when ``resize`` is None), expressed as one box to resize."""
    if preprocessing.resize is None:
        return 0.0, 0.0, float(height), float(width)
    # The resized size as torchvision computes it: the shorter side exact, the longer truncated.
    resize = preprocessing.resize
    new_long = int(resize * max(height, width) / min(height, width))
    new_h, new_w = (resize, new_long) if height <= width else (new_long, resize)
    side = preprocessing.resolution
    top, left = int(round((new_h - side) / 2)), int(round((new_w - side) / 2))
    scale_y, scale_x = height / new_h, width / new_w
    return top * scale_y, left * scale_x, side * scale_y, side * scale_x


# --- Reading and decoding ------------------------------------------------------------------------


def read_bytes(path: str) -> torch.Tensor:
    """A file's bytes as a 1-D uint8 tensor, or an error naming the file."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise MobileNetsError(f"cannot read image {path!r}: {error}") from error
    # bytearray: torch.frombuffer warns on read-only buffers such as bytes.
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def decode_batch(
    datas: Sequence[torch.Tensor], paths: Sequence[str], device: torch.device
) -> list[torch.Tensor]:
    """uint8 (3, H, W) RGB images on ``device``: the JPEGs in one batched ``decode_jpeg`` call,
    anything else (PNG, GIF, ...) by ``decode_image`` on the CPU; a file neither decodes raises
    an error naming it. Grayscale and CMYK JPEGs come out RGB."""
    images: list[torch.Tensor | None] = [None] * len(datas)
    jpegs = [i for i, data in enumerate(datas) if bytes(data[:3].tolist()) == JPEG_MAGIC]
    is_jpeg = set(jpegs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", DECODER_DEPRECATION, DeprecationWarning)
        if jpegs:
            try:
                decoded = decode_jpeg(
                    [datas[i] for i in jpegs], mode=ImageReadMode.RGB, device=device
                )
                for i, image in zip(jpegs, decoded, strict=True):
                    images[i] = image
            except RuntimeError:
                # One bad file fails the whole batched call: decode one by one to find it.
                pass
        for i, image in enumerate(images):
            if image is None:
                images[i] = decode_one(datas[i], paths[i], device, i in is_jpeg)
    return images


def decode_one(data: torch.Tensor, path: str, device: torch.device, jpeg: bool) -> torch.Tensor:
    """One file: ``decode_jpeg`` on the device for a JPEG, else ``decode_image`` on the CPU."""
    if jpeg:
        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:
            pass  # nvJPEG refuses some JPEGs that libjpeg-turbo reads: try the CPU next
    try:
        image = decode_image(data, mode=ImageReadMode.RGB)
    except RuntimeError as error:
        # torchvision's messages start with the C++ source location: keep only the reason.
        reason = re.sub(r"^.*\.cpp:\d+,\s*", "", str(error).strip())
        raise MobileNetsError(f"cannot decode image {path!r}: {reason}") from error
    if image.ndim == 4:  # an animated GIF: the first frame, as PIL opens it
        image = image[0]
    if image.dtype != torch.uint8:  # 16-bit PNG
        image = TF.to_dtype(image, torch.uint8, scale=True)
    return image.to(device)


# --- Cropping and resizing -----------------------------------------------------------------------


def resized_crops(
    images: Sequence[torch.Tensor], boxes: Sequence[Box], resolution: int, sampling_ratio: int = -1
) -> torch.Tensor:
    """Each image's box resized to ``resolution`` x ``resolution``: float (B, C, R, R) in the
    images' value range, on their device.

    ``roi_align`` with ``aligned=True`` samples at the pixel centres of the output mapped into
    the box, the coordinates ``interpolate(mode="bilinear", align_corners=False)`` uses; with
    ``sampling_ratio=1`` it is that bilinear resize. The default (-1) averages ceil(box side /
    resolution) samples per output pixel along each side, so a shrinking crop is low-pass
    filtered much as an antialiased resize is. Images of the same size go in one call.
    """
    device = images[0].device
    out = torch.empty(len(images), images[0].shape[0], resolution, resolution, device=device)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(tuple(image.shape), []).append(i)
    # (group position, x1, y1, x2, y2) rows, built on the CPU and moved once.
    rois = torch.zeros(len(images), 5, dtype=torch.float32)
    for members in groups.values():
        for position, i in enumerate(members):
            top, left, height, width = boxes[i]
            rois[i] = torch.tensor([position, left, top, left + width, top + height])
    rois = rois.to(device)
    for members in groups.values():
        batch = torch.stack([images[i] for i in members]).float()
        index = torch.tensor(members, device=device)
        out[index] = roi_align(
            batch,
            rois[index],
            output_size=resolution,
            spatial_scale=1.0,
            sampling_ratio=sampling_ratio,
            aligned=True,
        )
    return out


# --- The dataset ---------------------------------------------------------------------------------


class JpegFolderOnDevice:
    """Image files (an ImageFolder's ``(path, label)`` samples) read as batches on a device.

    ``train=True``: random-resized crop (torchvision's scale (0.08, 1) and ratio (3/4, 4/3)),
    horizontal flip with probability 0.5, normalisation: ``train_transform`` for large images
    without TrivialAugment or random erasing. ``train=False``: ``eval_transform``'s resize and
    center crop. Images come out float (B, 3, R, R), channels_last when asked, labels int64,
    both on the device that [`batches`][mobilenets.data.jpeg_device.JpegFolderOnDevice.batches]
    is given.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        preprocessing: Preprocessing,
        *,
        train: bool = True,
        channels_last: bool = False,
        read_threads: int = READ_THREADS,
    ) -> None:
        if preprocessing.channels != 3:
            raise MobileNetsError(
                f"preprocessing.channels={preprocessing.channels}: the device JPEG pipeline "
                "decodes RGB images only (channels=3)"
            )
        resize = preprocessing.resize
        if not train and resize is not None and resize < preprocessing.resolution:
            raise MobileNetsError(
                f"preprocessing.resize={preprocessing.resize} is smaller than resolution="
                f"{preprocessing.resolution}: the device pipeline crops inside the resized "
                "image and does not pad; use resize >= resolution"
            )
        if read_threads < 1:
            raise MobileNetsError(f"read_threads={read_threads}: must be at least 1")
        self.samples = list(samples)
        self.labels = torch.tensor([label for _, label in self.samples], dtype=torch.long)
        self.preprocessing, self.train = preprocessing, train
        self.channels_last, self.read_threads = channels_last, read_threads
        mean = torch.tensor(preprocessing.mean).view(1, 3, 1, 1)
        std = torch.tensor(preprocessing.std).view(1, 3, 1, 1)
        # (x / 255 - mean) / std as one multiply-add on the device.
        self.scale, self.shift = 1 / (255 * std), -mean / std

    @classmethod
    def from_files(
        cls, files: ImageFiles, preprocessing: Preprocessing, **options
    ) -> JpegFolderOnDevice:
        """The device pipeline over an ``ImageFiles``' samples (its transform is not used)."""
        return cls(files.samples, preprocessing, **options)

    def __len__(self) -> int:
        return len(self.samples)

    def draws(self, height: int, width: int, seed: int) -> tuple[Box, bool]:
        """One image's crop box in source pixels and whether it is flipped: in training the
        draws of ``RandomResizedCrop`` then ``RandomHorizontalFlip`` from a generator seeded
        with ``seed``; in evaluation the center box, unflipped."""
        if not self.train:
            return center_box(height, width, self.preprocessing), False
        generator = torch.Generator().manual_seed(seed)
        box = random_resized_box(height, width, generator)
        # RandomHorizontalFlip leaves the image as it is when rand >= p (p = 0.5).
        flip = bool(torch.rand(1, generator=generator).item() < 0.5)
        return tuple(float(x) for x in box), flip

    def batches(
        self, sampler: EpochSampler, batch_size: int, device: torch.device | str
    ) -> DeviceBatches:
        """The epoch's remaining batches in ``sampler``'s order (this rank's share, from its
        ``start_batch``), as ``(images, labels)`` on ``device``. ``batch_size`` is the one the
        sampler counts ``start_batch`` in; each image's draws depend on the sampler's seed and
        epoch and the image's index only."""
        if batch_size < 1:
            raise MobileNetsError(f"batch_size={batch_size}: must be at least 1")
        indices = sampler.indices()
        items = [(i, sample_seed(sampler.seed, sampler.epoch, i)) for i in indices]
        plan = [items[start : start + batch_size] for start in range(0, len(items), batch_size)]
        return DeviceBatches(self, plan, torch.device(device))

    def make_batch(
        self, items: Sequence[tuple[int, int]], datas: Sequence[torch.Tensor], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode, crop, resize, flip and normalise one batch of read files."""
        paths = [self.samples[index][0] for index, _ in items]
        images = decode_batch(datas, paths, device)
        boxes, flips = [], []
        for position, (image, (_, seed)) in enumerate(zip(images, items, strict=True)):
            box, flip = self.draws(image.shape[-2], image.shape[-1], seed)
            if self.train:
                # Cut the crop out first, as RandomResizedCrop does: the resize then repeats
                # the crop's edge pixels instead of reading the image beyond it.
                top, left, height, width = (int(x) for x in box)
                images[position] = image[:, top : top + height, left : left + width]
                box = (0.0, 0.0, float(height), float(width))
            boxes.append(box)
            flips.append(flip)
        out = resized_crops(images, boxes, self.preprocessing.resolution)
        if any(flips):
            flipped = torch.tensor(flips, device=device).view(-1, 1, 1, 1)
            out = torch.where(flipped, out.flip(-1), out)
        out = out * self.scale.to(device) + self.shift.to(device)
        if self.channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        labels = self.labels[[index for index, _ in items]].to(device)
        return out, labels


class DeviceBatches:
    """One epoch's batches of a
    [`JpegFolderOnDevice`][mobilenets.data.jpeg_device.JpegFolderOnDevice]: iterable, with a
    length; while one batch is decoded and augmented, a thread pool reads the next one's files."""

    def __init__(
        self, dataset: JpegFolderOnDevice, plan: list[list[tuple[int, int]]], device: torch.device
    ) -> None:
        self.dataset, self.plan, self.device = dataset, plan, device

    def __len__(self) -> int:
        return len(self.plan)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if not self.plan:
            return
        samples = self.dataset.samples

        def submit(pool: ThreadPoolExecutor, items: list[tuple[int, int]]) -> list:
            return [pool.submit(read_bytes, samples[index][0]) for index, _ in items]

        with ThreadPoolExecutor(self.dataset.read_threads) as pool:
            pending = submit(pool, self.plan[0])
            for number, items in enumerate(self.plan):
                datas = [future.result() for future in pending]
                if number + 1 < len(self.plan):
                    pending = submit(pool, self.plan[number + 1])
                yield self.dataset.make_batch(items, datas, self.device)
