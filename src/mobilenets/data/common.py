"""What every task's datasets share: where data lives, reading images, seeded sampling.

Augmentation is deterministic: the sampler hands each index its own seed, derived from (run
seed, epoch, index), so a resumed run, a different worker count or another rank sees exactly the
images an uninterrupted run would.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Sampler

from mobilenets.core.errors import MobileNetsError

DATA_ENV = "MOBILENETS_DATA"


def data_dirs() -> list[Path]:
    """Where datasets are looked for, in order: $MOBILENETS_DATA, then the user cache."""
    dirs = []
    if os.environ.get(DATA_ENV):
        dirs.append(Path(os.environ[DATA_ENV]))
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    dirs.append(cache / "mobilenets" / "data")
    return dirs


class TensorImages(Dataset):
    """In-memory uint8 images (N, C, H, W) and labels; items are looked up by (index, seed)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform=None) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item):
        index, seed = item
        return seeded(self.transform, self.images[index], seed), int(self.labels[index])


class ImageFiles(Dataset):
    """Image files with labels (an ImageFolder's samples); an unreadable file names its path."""

    def __init__(self, samples: Sequence[tuple[str, int]], transform=None) -> None:
        self.samples, self.transform = list(samples), transform
        self.labels = torch.tensor([label for _, label in self.samples], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item):
        index, seed = item
        path, label = self.samples[index]
        return seeded(self.transform, open_image(path), seed), label


def seeded(transform, image, seed: int):
    """Apply a random transform with its randomness fixed by ``seed`` (the global RNG is kept)."""
    if transform is None:
        return image
    # torchvision's transforms draw from the default CPU generator. Saving and restoring its
    # state costs microseconds; torch.random.fork_rng costs a few hundred.
    generator = torch.default_generator
    saved = generator.get_state()
    generator.manual_seed(seed)
    try:
        return transform(image)
    finally:
        generator.set_state(saved)


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file fully, or raise an error naming the file."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise MobileNetsError(f"cannot read image {str(path)!r}: {error}") from error


# --- Sampling ----------------------------------------------------------------------------------


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample of one epoch: independent of batch, worker and rank."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class EpochSampler(Sampler):
    """Yields (index, seed) pairs: one epoch's order, this rank's share, from batch ``start``.

    The order is a permutation seeded by (seed, epoch), so it is known before the epoch starts:
    a resumed run skips the batches it already trained on and sees the rest unchanged. Training
    drops the incomplete last batch of the global batch (all ranks step together); evaluation
    keeps every sample.
    """

    def __init__(
        self,
        size,
        *,
        seed=0,
        epoch=0,
        shuffle=True,
        batch_size=1,
        drop_last=False,
        rank=0,
        world_size=1,
        start_batch=0,
    ) -> None:
        self.size, self.seed, self.epoch, self.shuffle = size, seed, epoch, shuffle
        self.batch_size, self.drop_last, self.start_batch = batch_size, drop_last, start_batch
        self.rank, self.world_size = rank, world_size

    def indices(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        if self.drop_last:
            step = self.batch_size * self.world_size
            order = order[: self.size // step * step]
        return order[self.rank :: self.world_size][self.start_batch * self.batch_size :]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self.indices():
            yield index, sample_seed(self.seed, self.epoch, index)

    def __len__(self) -> int:
        return len(self.indices())

    def num_batches(self) -> int:
        return -(-len(self) // self.batch_size)
