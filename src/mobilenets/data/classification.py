"""Datasets for training and evaluation, named by a ``data`` spec.

``fashion-mnist``: the real Fashion-MNIST, found in ``$MOBILENETS_DATA``, the user cache or
``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``), else downloaded from
the official mirror with an MD5 check. ``cifar10:DIR`` / ``cifar100:DIR``: the python-pickle
batches, read with an unpickler that accepts numpy arrays and nothing else. ``DIR``: an
ImageFolder tree with ``train/`` and ``val/`` (the ImageNet layout). ``synthetic[:N]``: generated
class templates plus noise, for tests and benchmarks.
"""

from __future__ import annotations

import gzip
import logging
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import datasets as tv_datasets
from tqdm import tqdm

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.preprocessing import (
    Preprocessing,
    imagenet_preprocessing,
)
from mobilenets.data.common import ImageFiles, TensorImages, data_dirs, open_image
from mobilenets.zoo.download import download

log = logging.getLogger("mobilenets")

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# (file, MD5 of the file the official mirror serves). Debian recompresses the files, so local
# copies are checked by structure (IDX magic, counts, label range) instead.
FASHION_MNIST_FILES = {
    "train_images": ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
    "train_labels": ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
    "test_images": ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# Inputs up to this side count as small: pad-and-crop augmentation, the small-input model.
SMALL_IMAGE = 64
SYNTHETIC_TRAIN = 512
SYNTHETIC_SIDE = 32
SYNTHETIC_CLASSES = 10
SPEC_HELP = (
    "fashion-mnist, cifar10:DIR, cifar100:DIR, synthetic[:N], or an ImageFolder DIR with "
    "train/ and val/"
)


# --- Datasets --------------------------------------------------------------------------------


@dataclass
class Splits:
    """A dataset's train and validation (test) splits, class names and native preprocessing."""

    name: str
    train: Dataset
    val: Dataset
    classes: tuple[str, ...]
    preprocessing: Preprocessing
    small: bool  # native images of at most SMALL_IMAGE pixels: the small-input model fits


def with_transforms(splits: Splits, train_transform, val_transform) -> Splits:
    splits.train.transform = train_transform
    splits.val.transform = val_transform
    return splits


# --- Fashion-MNIST -----------------------------------------------------------------------------


def find_fashion_mnist(download: bool = True) -> Path:
    """The folder holding the four Fashion-MNIST files; downloaded when none has them."""
    candidates = []
    for base in data_dirs():
        candidates += [base / "fashion-mnist", base]
    candidates.append(DEBIAN_FASHION_MNIST)
    names = [name for name, _ in FASHION_MNIST_FILES.values()]
    for folder in candidates:
        if all((folder / name).is_file() for name in names):
            return folder
    target = data_dirs()[0] / "fashion-mnist"
    if not download:
        raise MobileNetsError(
            f"Fashion-MNIST not found in {', '.join(str(c) for c in candidates)} "
            "(install the Debian package dataset-fashion-mnist, or allow the download)"
        )
    for name, md5 in FASHION_MNIST_FILES.values():
        fetch(FASHION_MNIST_MIRROR + name, target / name, md5)
    return target


def fetch(url: str, path: Path, md5: str) -> Path:
    """Download ``url`` to ``path`` with a progress bar; the file appears under its final name
    only after its MD5 matches, and an interrupted download resumes on the next run."""
    return download(url, path, md5=md5)


def read_idx(path: Path, expected_dims: int) -> torch.Tensor:
    """An IDX file (the MNIST format, gzip-compressed) as a uint8 tensor, checked."""
    try:
        with gzip.open(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError, zlib.error) as error:  # zlib.error: a corrupt deflate stream
        raise MobileNetsError(f"cannot read {str(path)!r}: {error}") from error
    # Magic: two zero bytes, type 0x08 (unsigned byte), the number of dimensions.
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08" or raw[3] != expected_dims:
        raise MobileNetsError(
            f"{str(path)!r} is not an IDX file of {expected_dims}-d unsigned bytes"
        )
    header = 4 + 4 * expected_dims
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(expected_dims))
    if len(raw) != header + int(np.prod(shape)):
        raise MobileNetsError(f"{str(path)!r} is truncated: header says shape {shape}")
    return torch.from_numpy(np.frombuffer(raw, np.uint8, offset=header).reshape(shape).copy())


def load_fashion_mnist(folder: Path | None = None) -> Splits:
    folder = find_fashion_mnist() if folder is None else folder
    parts = {}
    for key, (name, _) in FASHION_MNIST_FILES.items():
        parts[key] = read_idx(folder / name, 3 if key.endswith("images") else 1)
    for split in ("train", "test"):
        images, labels = parts[f"{split}_images"], parts[f"{split}_labels"]
        if len(images) != len(labels) or int(labels.max()) >= len(FASHION_MNIST_CLASSES):
            raise MobileNetsError(
                f"Fashion-MNIST {split} files in {str(folder)!r} disagree: "
                f"{len(images)} images, {len(labels)} labels, largest label {int(labels.max())}"
            )
    train = TensorImages(parts["train_images"][:, None], parts["train_labels"].long())
    val = TensorImages(parts["test_images"][:, None], parts["test_labels"].long())
    return in_memory_splits("fashion-mnist", train, val, FASHION_MNIST_CLASSES)


def in_memory_splits(name: str, train: TensorImages, val: TensorImages, classes) -> Splits:
    """Splits of in-memory images, normalized by the training set's own mean and std."""
    pixels = train.images.float().div_(255).transpose(0, 1).flatten(1)
    mean = tuple(round(v, 4) for v in pixels.mean(1).tolist())
    std = tuple(round(v, 4) for v in pixels.std(1).tolist())
    channels, side = train.images.shape[1], train.images.shape[-1]
    preprocessing = Preprocessing(side, mean, std, channels)
    return Splits(name, train, val, tuple(classes), preprocessing, side <= SMALL_IMAGE)


# --- CIFAR ---------------------------------------------------------------------------------------


class _ArrayUnpickler(pickle.Unpickler):
    """Reads the CIFAR python batches: dicts of lists, bytes and numpy arrays, nothing else."""

    # _reconstruct: pickle protocols up to 4 (the original files are Python 2's protocol 2);
    # _frombuffer: protocol 5, Python 3.14's default; _codecs.encode: bytes under protocol 2
    # written by Python 3.
    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing {module}.{name}: CIFAR batches hold only arrays")


def read_cifar_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            batch = _ArrayUnpickler(handle, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as error:
        raise MobileNetsError(f"cannot read CIFAR batch {str(path)!r}: {error}") from error
    if not isinstance(batch, dict):
        raise MobileNetsError(f"CIFAR batch {str(path)!r} holds no dict")
    return batch


CIFAR_LAYOUT = {
    # name: (folder, train files, test file, meta file, label key, class-name key)
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        "test_batch",
        "batches.meta",
        "labels",
        "label_names",
    ),
    "cifar100": ("cifar-100-python", ["train"], "test", "meta", "fine_labels", "fine_label_names"),
}


def load_cifar(name: str, root: Path) -> Splits:
    folder_name, train_files, test_file, meta_file, label_key, names_key = CIFAR_LAYOUT[name]
    folder = root / folder_name if (root / folder_name).is_dir() else root
    missing = [f for f in [*train_files, test_file, meta_file] if not (folder / f).is_file()]
    if missing:
        raise MobileNetsError(
            f"{name} folder {str(folder)!r} lacks {', '.join(missing)} (give the folder that "
            f"holds {folder_name}/ from the python version of the dataset)"
        )

    def read(files: list[str]) -> TensorImages:
        images, labels = [], []
        for file in files:
            batch = read_cifar_batch(folder / file)
            if "data" not in batch or label_key not in batch:
                raise MobileNetsError(f"CIFAR batch {str(folder / file)!r} lacks data/{label_key}")
            images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels += list(batch[label_key])
        return TensorImages(torch.from_numpy(np.concatenate(images)), torch.tensor(labels))

    train, val = read(train_files), read([test_file])
    classes = read_cifar_batch(folder / meta_file).get(names_key)
    if not classes or int(train.labels.max()) >= len(classes):
        raise MobileNetsError(f"{name} meta file in {str(folder)!r} has no usable {names_key}")
    return in_memory_splits(name, train, val, classes)


# --- ImageFolder -------------------------------------------------------------------------------


def load_image_folder(root: Path, resolution: int, skip_bad_images: bool = False) -> Splits:
    """An ImageNet-layout tree: ``root/train/CLASS/*.jpg`` and ``root/val/CLASS/*.jpg``."""
    splits = {}
    for split in ("train", "val"):
        folder = root / split
        if not folder.is_dir():
            raise MobileNetsError(
                f"data={str(root)!r}: no {split}/ folder (an ImageFolder dataset has "
                "train/CLASS/*.jpg and val/CLASS/*.jpg)"
            )
        try:
            found = tv_datasets.ImageFolder(str(folder), loader=open_image)
        except FileNotFoundError as error:
            raise MobileNetsError(f"data={str(folder)!r}: {error}") from error
        samples = found.samples
        if skip_bad_images:
            samples = drop_unreadable(samples, split)
        splits[split] = (found.classes, samples)
    (classes, train), (val_classes, val) = splits["train"], splits["val"]
    if val_classes != classes:
        differ = sorted(set(classes) ^ set(val_classes))
        raise MobileNetsError(
            f"data={str(root)!r}: train/ and val/ have different classes ({', '.join(differ)})"
        )
    small = False
    preprocessing = imagenet_preprocessing(resolution)
    return Splits(
        str(root), ImageFiles(train), ImageFiles(val), tuple(classes), preprocessing, small
    )


def drop_unreadable(samples: list[tuple[str, int]], split: str) -> list[tuple[str, int]]:
    """The samples whose image file opens; reports how many were skipped and the first one."""
    kept, bad = [], []
    for path, label in tqdm(samples, desc=f"checking {split} images", leave=False):
        try:
            with Image.open(path) as image:
                image.verify()
            kept.append((path, label))
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
            bad.append(path)
    if bad:
        log.warning(f"skipped {len(bad)} unreadable {split} images (first: {bad[0]})")
    if not kept:
        raise MobileNetsError(f"no readable {split} images left after skipping {len(bad)}")
    return kept


# --- Synthetic -----------------------------------------------------------------------------------


def load_synthetic(train_size: int = SYNTHETIC_TRAIN, seed: int = 0) -> Splits:
    """Learnable random data: each class is a smooth random template; samples add noise."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(SYNTHETIC_CLASSES, 3, 4, 4, generator=generator)
    templates = torch.nn.functional.interpolate(coarse, size=SYNTHETIC_SIDE, mode="bilinear")

    def make(count: int) -> TensorImages:
        labels = torch.arange(count) % SYNTHETIC_CLASSES
        noise = torch.randn(count, 3, SYNTHETIC_SIDE, SYNTHETIC_SIDE, generator=generator)
        images = (templates[labels] + 0.25 * noise).clamp(0, 1).mul(255).to(torch.uint8)
        return TensorImages(images, labels)

    classes = [f"class_{i}" for i in range(SYNTHETIC_CLASSES)]
    return in_memory_splits("synthetic", make(train_size), make(max(train_size // 4, 10)), classes)


# --- The data spec -----------------------------------------------------------------------------


def load_splits(spec: str, resolution: int, skip_bad_images: bool = False) -> Splits:
    """The dataset a ``data`` spec names (see the module docstring for the forms)."""
    if not isinstance(spec, str) or not spec:
        raise MobileNetsError(f"data={spec!r} is not one of: {SPEC_HELP}")
    kind, _, argument = spec.partition(":")
    if kind == "fashion-mnist" and not argument:
        return load_fashion_mnist()
    if kind in CIFAR_LAYOUT:
        if not argument:
            raise MobileNetsError(f"data={spec!r}: give the folder, as {kind}:DIR")
        return load_cifar(kind, Path(argument))
    if kind == "synthetic":
        if argument and not (argument.isdigit() and int(argument) >= SYNTHETIC_CLASSES):
            raise MobileNetsError(
                f"data={spec!r}: synthetic:N takes a training-set size N >= {SYNTHETIC_CLASSES}"
            )
        return load_synthetic(int(argument) if argument else SYNTHETIC_TRAIN)
    if Path(spec).is_dir():
        return load_image_folder(Path(spec), resolution, skip_bad_images)
    raise MobileNetsError(f"data={spec!r} is not one of: {SPEC_HELP}")
