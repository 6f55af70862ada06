"""Datasets named by a data spec, preprocessing, seeded augmentation and the epoch sampler.

Every test writes its own small files under tmp_path: nothing here reads /usr/share/datasets,
the user cache or the network (the download tests serve files from a local HTTP server).
"""

import gzip
import hashlib
import http.server
import json
import os
import pickle
import shlex
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from fashion_mnist_files import fashion_arrays, fashion_files, idx_gz, idx_header, write_files
from PIL import Image

import mobilenets.zoo.download
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    imagenet_preprocessing,
)
from mobilenets.data import classification as data
from mobilenets.data.classification import (
    FASHION_MNIST_CLASSES,
    SPEC_HELP,
    load_splits,
    with_transforms,
)
from mobilenets.data.common import EpochSampler, sample_seed, seeded
from mobilenets.data.transforms import eval_transform, train_transform

# --- Fashion-MNIST -----------------------------------------------------------------------------

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    """An empty $MOBILENETS_DATA; the user cache and the Debian path point at empty places."""
    folder = tmp_path / "data"
    folder.mkdir()
    monkeypatch.setenv("MOBILENETS_DATA", str(folder))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian-package")
    return folder


@pytest.mark.parametrize("subfolder", ["fashion-mnist", ""])
def test_fashion_mnist_loads_the_exact_files(data_dir, subfolder):
    arrays = fashion_arrays()
    write_files(data_dir / subfolder, fashion_files(arrays))
    splits = load_splits("fashion-mnist", 28)

    assert torch.equal(splits.train.images, torch.from_numpy(arrays["train_images"])[:, None])
    assert splits.train.labels.tolist() == arrays["train_labels"].tolist()
    assert torch.equal(splits.val.images, torch.from_numpy(arrays["test_images"])[:, None])
    assert splits.val.labels.tolist() == arrays["test_labels"].tolist()
    image, label = splits.train[(5, 0)]  # no transform yet: the stored image itself
    assert torch.equal(image[0], torch.from_numpy(arrays["train_images"][5]))
    assert label == arrays["train_labels"][5]

    assert splits.classes == FASHION_MNIST_CLASSES and len(splits.classes) == 10
    assert splits.small is True
    pixels = arrays["train_images"].astype(np.float64) / 255
    preprocessing = splits.preprocessing
    assert (preprocessing.resolution, preprocessing.channels) == (28, 1)
    assert preprocessing.mean == pytest.approx((pixels.mean(),), abs=2e-4)
    assert preprocessing.std == pytest.approx((pixels.std(ddof=1),), abs=2e-4)


def corrupt_gzip_stream(content: bytes) -> bytes:
    # The first deflate byte 0x07 declares the reserved block type 3: zlib.error, not OSError.
    return content[:10] + b"\x07" + content[11:]


ZEROS = np.zeros((2, 28, 28), np.uint8)


@pytest.mark.parametrize(
    "content, message",
    [
        (idx_gz(ZEROS)[:40], "cannot read"),  # the gzip stream cut short
        (b"not gzip at all", "cannot read"),
        (corrupt_gzip_stream(idx_gz(ZEROS)), "cannot read"),
        (idx_gz(ZEROS.reshape(2, 784)), "not an IDX file of 3-d"),  # the magic says 2-d
        (gzip.compress(b"\x00\x00\x0d\x03" + bytes(12)), "not an IDX file"),  # 0x0d: floats
        (gzip.compress(idx_header(20, 28, 28) + bytes(100)), "truncated"),
    ],
    ids=["gzip-cut", "not-gzip", "bad-deflate", "wrong-ndim", "wrong-type", "truncated"],
)
def test_fashion_mnist_bad_file_is_named(data_dir, content, message):
    files = fashion_files(fashion_arrays())
    files[TRAIN_IMAGES] = content
    write_files(data_dir, files)
    with pytest.raises(MobileNetsError, match=message) as error:
        load_splits("fashion-mnist", 28)
    assert str(data_dir / TRAIN_IMAGES) in str(error.value)


def test_fashion_mnist_images_and_labels_must_agree(data_dir):
    arrays = fashion_arrays()
    arrays["test_labels"] = arrays["test_labels"][:-1]
    write_files(data_dir, fashion_files(arrays))
    with pytest.raises(MobileNetsError, match="test files .* disagree: 10 images, 9 labels"):
        load_splits("fashion-mnist", 28)


# --- Fashion-MNIST download --------------------------------------------------------------------


@contextmanager
def mirror(files: dict[str, bytes], failure: str | None = None):
    """A local HTTP server standing in for the Fashion-MNIST mirror; yields its base URL.

    ``failure``: "404" answers Not Found, "hang-up" closes the connection without a response,
    "cut-short" sends half of each file under the full Content-Length and then closes.
    """

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            name = self.path.lstrip("/")
            if failure == "hang-up":
                self.close_connection = True
                return
            if failure == "404" or name not in files:
                self.send_error(404)
                return
            body = files[name]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if failure == "cut-short" else body)
            self.close_connection = True

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def official(data_dir, monkeypatch) -> dict[str, bytes]:
    """Generated files standing in for the official ones, their MD5s recorded as official."""
    monkeypatch.setenv("no_proxy", "*")  # a proxy in the environment must not see 127.0.0.1
    monkeypatch.setattr(mobilenets.zoo.download, "BACKOFF", 0)  # retry at once
    files = fashion_files(fashion_arrays())
    md5s = {
        key: (name, hashlib.md5(files[name]).hexdigest())
        for key, (name, _) in data.FASHION_MNIST_FILES.items()
    }
    monkeypatch.setattr(data, "FASHION_MNIST_FILES", md5s)
    return files


def test_fashion_mnist_downloads_into_the_data_dir(data_dir, official, monkeypatch):
    with mirror(official) as url:
        monkeypatch.setattr(data, "FASHION_MNIST_MIRROR", url)
        downloaded = load_splits("fashion-mnist", 28)
    target = data_dir / "fashion-mnist"
    assert sorted(p.name for p in target.iterdir()) == sorted(official)  # no .part left
    assert all((target / name).read_bytes() == content for name, content in official.items())
    expected = torch.from_numpy(fashion_arrays()["train_images"])[:, None]
    assert torch.equal(downloaded.train.images, expected)
    # The mirror is gone: the second load reads the downloaded copy.
    assert torch.equal(load_splits("fashion-mnist", 28).train.images, expected)


def test_fashion_mnist_download_replaces_a_stale_partial_file(data_dir, official, monkeypatch):
    target = data_dir / "fashion-mnist"
    target.mkdir()
    (target / f".{TRAIN_IMAGES}.part").write_bytes(b"left by an interrupted run")
    # The download asks to resume after the stale bytes; the mirror ignores Range and sends the
    # whole file, which replaces them.
    with mirror(official) as url:
        monkeypatch.setattr(data, "FASHION_MNIST_MIRROR", url)
        load_splits("fashion-mnist", 28)
    assert (target / TRAIN_IMAGES).read_bytes() == official[TRAIN_IMAGES]
    assert sorted(p.name for p in target.iterdir()) == sorted(official)


def test_fashion_mnist_corrupt_download_is_refused_and_removed(data_dir, official, monkeypatch):
    served = dict(official)
    served[TRAIN_IMAGES] = official[TRAIN_IMAGES][:-1] + b"?"
    with mirror(served) as url:
        monkeypatch.setattr(data, "FASHION_MNIST_MIRROR", url)
        with pytest.raises(MobileNetsError) as error:
            load_splits("fashion-mnist", 28)
    actual = hashlib.md5(served[TRAIN_IMAGES]).hexdigest()
    expected = hashlib.md5(official[TRAIN_IMAGES]).hexdigest()
    assert f"{url}{TRAIN_IMAGES} is corrupt: MD5 {actual}, expected {expected}" in str(error.value)
    assert list((data_dir / "fashion-mnist").iterdir()) == []  # neither final name nor .part


@pytest.mark.parametrize(
    "failure, message", [("404", "failed: HTTP Error 404"), ("hang-up", "failed after 4 attempts")]
)
def test_fashion_mnist_failed_download_is_one_error(
    data_dir, official, monkeypatch, failure, message
):
    with mirror(official, failure) as url:
        monkeypatch.setattr(data, "FASHION_MNIST_MIRROR", url)
        with pytest.raises(MobileNetsError, match=f"download of {url}{TRAIN_IMAGES} {message}"):
            load_splits("fashion-mnist", 28)
    assert list((data_dir / "fashion-mnist").iterdir()) == []


def test_fashion_mnist_cut_short_download_keeps_the_part_for_the_next_run(
    data_dir, official, monkeypatch
):
    target = data_dir / "fashion-mnist"
    partial = target / f".{TRAIN_IMAGES}.part"
    with mirror(official, "cut-short") as url:
        monkeypatch.setattr(data, "FASHION_MNIST_MIRROR", url)
        with pytest.raises(MobileNetsError) as error:
            load_splits("fashion-mnist", 28)
    message = str(error.value)
    assert message.startswith(f"download of {url}{TRAIN_IMAGES} failed after 4 attempts: ")
    assert message.endswith(f"the partial file {partial} is kept; run again to resume")
    assert [p.name for p in target.iterdir()] == [partial.name]  # nothing under a final name
    content = official[TRAIN_IMAGES]
    assert partial.read_bytes() == content[: len(content) // 2]
    with mirror(official) as url:
        monkeypatch.setattr(data, "FASHION_MNIST_MIRROR", url)
        load_splits("fashion-mnist", 28)
    assert sorted(p.name for p in target.iterdir()) == sorted(official)
    assert (target / TRAIN_IMAGES).read_bytes() == content


# --- CIFAR ---------------------------------------------------------------------------------------


def dump(path: Path, obj, protocol: int = 4, legacy_numpy: bool = False) -> None:
    content = pickle.dumps(obj, protocol=protocol)
    if legacy_numpy:  # the module name numpy 1 wrote, as in the original files (GLOBAL opcode)
        assert protocol <= 3
        content = content.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    path.write_bytes(content)


def write_cifar(root: Path, name: str, **pickling) -> dict:
    """A tiny CIFAR in the python layout, 2 images per batch: returns the (N, 3072) rows and the
    labels of "train" and "test"."""
    folder_name, train_files, test_file, meta_file, label_key, names_key = data.CIFAR_LAYOUT[name]
    folder = root / folder_name
    folder.mkdir(parents=True)
    classes = 10 if name == "cifar10" else 100
    rng = np.random.default_rng(1)
    rows, labels = {}, {}
    for split, files in (("train", train_files), ("test", [test_file])):
        rows[split] = rng.integers(0, 256, (2 * len(files), 3072), dtype=np.uint8)
        labels[split] = [int(v) for v in rng.integers(0, classes, 2 * len(files))]
        for i, file in enumerate(files):
            part = slice(2 * i, 2 * i + 2)
            batch = {"data": rows[split][part], label_key: labels[split][part]}
            dump(folder / file, batch, **pickling)
    dump(folder / meta_file, {names_key: [f"class{i}" for i in range(classes)]}, **pickling)
    return {
        "train": rows["train"],
        "test": rows["test"],
        "train_labels": labels["train"],
        "test_labels": labels["test"],
    }


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("give", ["parent", "batches folder"])
def test_cifar_loads_pixels_in_chw_order(tmp_path, name, give):
    written = write_cifar(tmp_path, name)
    folder = tmp_path if give == "parent" else tmp_path / data.CIFAR_LAYOUT[name][0]
    splits = load_splits(f"{name}:{folder}", 32)

    train = written["train"]
    assert splits.train.images.shape == (len(train), 3, 32, 32)
    # Row layout: 1024 red values, then green, then blue, each row-major.
    assert splits.train.images[1, 1, 2, 3] == train[1, 1024 + 2 * 32 + 3]
    assert splits.train.images[0, 2, 31, 0] == train[0, 2048 + 31 * 32]
    assert torch.equal(splits.train.images, torch.from_numpy(train.reshape(-1, 3, 32, 32)))
    assert torch.equal(splits.val.images, torch.from_numpy(written["test"].reshape(-1, 3, 32, 32)))
    assert splits.train.labels.tolist() == written["train_labels"]
    assert splits.val.labels.tolist() == written["test_labels"]
    assert len(splits.classes) == (10 if name == "cifar10" else 100)
    assert splits.classes[7] == "class7" and splits.small is True
    channel_means = (train.reshape(-1, 3, 1024) / 255).mean(axis=(0, 2))
    assert splits.preprocessing.mean == pytest.approx(tuple(channel_means), abs=2e-4)
    assert (splits.preprocessing.resolution, splits.preprocessing.channels) == (32, 3)


@pytest.mark.parametrize(
    "pickling",
    [{"protocol": 2, "legacy_numpy": True}, {"protocol": 2}, {"protocol": 5}],
    ids=["protocol2-numpy1-names", "protocol2", "protocol5"],
)
def test_cifar_reads_every_way_numpy_pickles_an_array(tmp_path, pickling):
    written = write_cifar(tmp_path, "cifar100", **pickling)
    splits = load_splits(f"cifar100:{tmp_path}", 32)
    assert torch.equal(splits.train.images.flatten(1), torch.from_numpy(written["train"]))


class RunsShell:
    """Pickles as a call of os.system: what a malicious batch file would hold."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_cifar_pickle_with_code_is_refused_unrun(tmp_path):
    write_cifar(tmp_path, "cifar10")
    marker = tmp_path / "payload-ran"
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    payload = {"data": RunsShell(f"touch {shlex.quote(str(marker))}"), "labels": [0, 1]}
    dump(batch, payload)

    with pytest.raises(MobileNetsError, match="refusing .*system") as error:
        load_splits(f"cifar10:{tmp_path}", 32)
    assert str(batch) in str(error.value)
    assert not marker.exists()
    pickle.loads(batch.read_bytes())  # the control: a plain unpickler runs the payload
    assert marker.exists()


@pytest.mark.parametrize("missing", ["data_batch_3", "batches.meta"])
def test_cifar_missing_file_is_named(tmp_path, missing):
    write_cifar(tmp_path, "cifar10")
    (tmp_path / "cifar-10-batches-py" / missing).unlink()
    with pytest.raises(MobileNetsError, match=f"lacks {missing} "):
        load_splits(f"cifar10:{tmp_path}", 32)


# --- ImageFolder -------------------------------------------------------------------------------

COLORS = {"a": (255, 0, 0), "b": (0, 0, 255), "c": (0, 255, 0)}


def write_image_folder(root: Path, layout: dict[str, dict[str, int]]) -> None:
    """``layout``: split -> class -> number of 8x8 PNGs, each filled with its class's color."""
    for split, classes in layout.items():
        for name, count in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (8, 8), COLORS[name]).save(folder / f"{i}.png")


@pytest.fixture
def image_root(tmp_path) -> Path:
    root = tmp_path / "images"
    write_image_folder(root, {"train": {"a": 2, "b": 3}, "val": {"a": 1, "b": 1}})
    return root


def test_image_folder_classes_samples_and_transforms(image_root):
    splits = load_splits(str(image_root), 16)
    assert splits.classes == ("a", "b")
    assert (len(splits.train), len(splits.val)) == (5, 2)
    assert splits.train.labels.tolist() == [0, 0, 1, 1, 1]
    assert splits.preprocessing == imagenet_preprocessing(16) and splits.small is False

    image, label = splits.val[(1, 0)]
    assert label == 1 and image.size == (8, 8) and image.getpixel((3, 3)) == COLORS["b"]
    preprocessing = splits.preprocessing
    augmented = train_transform(preprocessing, "trivial", 0.25, small=False)
    splits = with_transforms(splits, augmented, eval_transform(preprocessing))
    image, label = splits.val[(0, 0)]
    assert image.shape == (3, 16, 16) and label == 0
    red = (1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    assert torch.allclose(image[0], torch.full((16, 16), red), atol=1e-5)
    assert splits.train[(4, 123)][0].shape == (3, 16, 16)


def test_image_folder_empty_class_is_an_error(image_root):
    (image_root / "train" / "c").mkdir()
    with pytest.raises(MobileNetsError, match="no valid file for the classes c") as error:
        load_splits(str(image_root), 16)
    assert str(image_root / "train") in str(error.value)


def test_image_folder_val_classes_must_match_train(tmp_path):
    write_image_folder(tmp_path, {"train": {"a": 1, "b": 1}, "val": {"a": 1, "c": 1}})
    with pytest.raises(MobileNetsError, match=r"different classes \(b, c\)"):
        load_splits(str(tmp_path), 16)


def test_image_folder_needs_val(tmp_path):
    write_image_folder(tmp_path, {"train": {"a": 1}})
    with pytest.raises(MobileNetsError, match="no val/ folder"):
        load_splits(str(tmp_path), 16)


def test_image_folder_corrupt_image_names_its_path(image_root):
    bad = image_root / "train" / "b" / "1.png"
    bad.write_bytes(b"this is not a png")
    splits = load_splits(str(image_root), 16)
    assert len(splits.train) == 5  # not checked up front unless asked
    index = [path for path, _ in splits.train.samples].index(str(bad))
    with pytest.raises(MobileNetsError, match="cannot read image") as error:
        splits.train[(index, 0)]
    assert str(bad) in str(error.value)
    splits.train[(index - 1, 0)]  # its neighbours still load


def test_image_folder_skips_bad_images_when_asked(image_root, caplog):
    bad = image_root / "train" / "b" / "1.png"
    bad.write_bytes(b"this is not a png")
    splits = load_splits(str(image_root), 16, skip_bad_images=True)
    assert f"skipped 1 unreadable train images (first: {bad})" in caplog.messages
    assert len(splits.train) == 4 and splits.train.labels.tolist() == [0, 0, 1, 1]
    assert str(bad) not in [path for path, _ in splits.train.samples]
    assert all(splits.train[(i, 0)][0].size == (8, 8) for i in range(4))
    assert len(splits.val) == 2


def test_image_folder_with_no_readable_image_is_an_error(tmp_path):
    write_image_folder(tmp_path, {"train": {"a": 1}, "val": {"a": 1}})
    (tmp_path / "train" / "a" / "0.png").write_bytes(b"garbage")
    with pytest.raises(MobileNetsError, match="no readable train images left after skipping 1"):
        load_splits(str(tmp_path), 16, skip_bad_images=True)


# --- synthetic and the spec --------------------------------------------------------------------


def test_synthetic_sizes_and_determinism():
    splits = load_splits("synthetic:40", 32)
    assert (len(splits.train), len(splits.val)) == (40, 10)
    assert splits.train.images.shape == (40, 3, 32, 32)
    assert splits.train.images.dtype == torch.uint8
    assert splits.train.labels.tolist() == [i % 10 for i in range(40)]
    assert len(splits.classes) == 10 and splits.small is True
    assert torch.equal(load_splits("synthetic:40", 32).train.images, splits.train.images)
    default = load_splits("synthetic", 32)
    assert (len(default.train), len(default.val)) == (data.SYNTHETIC_TRAIN, 128)


@pytest.mark.parametrize(
    "spec, allowed",
    [
        ("nope", SPEC_HELP),
        ("", SPEC_HELP),
        ("fashion-mnist:extra", SPEC_HELP),
        ("synthetic:3", "synthetic:N takes a training-set size N >= 10"),
        ("synthetic:many", "synthetic:N takes a training-set size N >= 10"),
        ("cifar10:", "give the folder, as cifar10:DIR"),
        ("cifar100:", "give the folder, as cifar100:DIR"),
    ],
)
def test_bad_spec_names_the_allowed_forms(spec, allowed):
    with pytest.raises(MobileNetsError) as error:
        load_splits(spec, 32)
    assert allowed in str(error.value) and str(error.value).startswith(f"data={spec!r}")


def test_spec_help_lists_every_form():
    for form in ("fashion-mnist", "cifar10:DIR", "cifar100:DIR", "synthetic[:N]", "train/"):
        assert form in SPEC_HELP


# --- EpochSampler ------------------------------------------------------------------------------


def order(**kwargs) -> list[int]:
    return [index for index, _ in EpochSampler(23, seed=5, **kwargs)]


def test_sampler_order_depends_on_seed_and_epoch_only():
    first = order(epoch=3, batch_size=4)
    assert sorted(first) == list(range(23))
    assert order(epoch=3, batch_size=4) == first
    assert order(epoch=3, batch_size=7) == first  # batch size does not change the order
    assert order(epoch=4, batch_size=4) != first
    assert [i for i, _ in EpochSampler(23, seed=6, epoch=3)] != first
    assert order(shuffle=False) == list(range(23))


def test_sampler_shards_are_disjoint_and_cover_the_trimmed_epoch():
    full = order(epoch=1, batch_size=4)
    shards = [order(epoch=1, batch_size=4, drop_last=True, rank=r, world_size=2) for r in (0, 1)]
    assert [len(shard) for shard in shards] == [8, 8]  # 23 // (4 * 2) * 8 = 16 samples
    assert not set(shards[0]) & set(shards[1])
    assert set(shards[0]) | set(shards[1]) == set(full[:16])
    kept = [order(epoch=1, world_size=2, rank=r) for r in (0, 1)]  # evaluation keeps all 23
    assert sorted(kept[0] + kept[1]) == list(range(23))


@pytest.mark.parametrize("rank, world_size", [(0, 1), (1, 2)])
def test_sampler_resumes_after_start_batch(rank, world_size):
    settings = dict(epoch=2, batch_size=3, drop_last=True, rank=rank, world_size=world_size)
    whole = list(EpochSampler(23, seed=5, **settings))
    for start in (0, 1, 2):
        resumed = EpochSampler(23, seed=5, start_batch=start, **settings)
        assert list(resumed) == whole[start * 3 :]
        assert resumed.num_batches() == len(whole) // 3 - start


def test_sampler_seeds_and_lengths():
    sampler = EpochSampler(23, seed=5, epoch=7, batch_size=4)
    pairs = list(sampler)
    assert [seed for _, seed in pairs] == [sample_seed(5, 7, index) for index, _ in pairs]
    assert len({seed for _, seed in pairs}) == 23
    assert all(0 <= seed < 2**63 for _, seed in pairs)
    assert sample_seed(5, 7, 0) != sample_seed(5, 8, 0) != sample_seed(6, 7, 0)
    assert (len(sampler), sampler.num_batches()) == (23, 6)
    dropped = EpochSampler(23, seed=5, batch_size=4, drop_last=True)
    assert (len(dropped), dropped.num_batches()) == (20, 5)
    assert len(list(dropped)) == len(dropped)


# --- seeded augmentation and Preprocessing -----------------------------------------------------


def test_seeded_augmentation_is_reproducible_and_keeps_the_global_rng():
    preprocessing = Preprocessing(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    transform = train_transform(preprocessing, "trivial", 0.5, small=True)
    image = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8, generator=torch.Generator())
    torch.manual_seed(1234)
    state = torch.get_rng_state()

    first = seeded(transform, image, 7)
    assert first.shape == (3, 16, 16) and first.dtype == torch.float32
    assert torch.equal(seeded(transform, image, 7), first)
    outputs = {seeded(transform, image, seed).numpy().tobytes() for seed in range(8)}
    assert len(outputs) >= 6
    assert torch.equal(torch.get_rng_state(), state)
    assert seeded(None, image, 7) is image


def test_tensor_images_augment_by_the_sampler_seed():
    splits = load_splits("synthetic:10", 32)
    transform = train_transform(splits.preprocessing, "none", 0.0, small=True)
    splits = with_transforms(splits, transform, eval_transform(splits.preprocessing))
    image, label = splits.train[(4, 99)]
    assert torch.equal(image, seeded(transform, splits.train.images[4], 99)) and label == 4


def test_eval_transform_normalizes_tensor_and_pil_images():
    mean, std = (0.2, 0.4, 0.6), (0.5, 0.25, 0.125)
    transform = eval_transform(Preprocessing(8, mean, std))
    pixels = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8, generator=torch.Generator())
    expected = (pixels / 255 - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    pil = Image.fromarray(pixels.permute(1, 2, 0).numpy())
    for image in (pixels, pil):
        out = transform(image)
        assert out.shape == (3, 8, 8) and out.dtype == torch.float32
        assert torch.allclose(out, expected, atol=1e-5)


def test_eval_transform_resizes_to_the_resolution():
    large = torch.zeros(3, 20, 12, dtype=torch.uint8)
    assert eval_transform(Preprocessing(8, (0.5,) * 3, (0.5,) * 3))(large).shape == (3, 8, 8)
    cropped = eval_transform(Preprocessing(8, (0.5,) * 3, (0.5,) * 3, resize=10))(large)
    assert cropped.shape == (3, 8, 8)


def test_eval_transform_converts_channels():
    gray = Image.fromarray(np.full((8, 8), 51, np.uint8))
    out = eval_transform(Preprocessing(8, (0.1, 0.2, 0.3), (0.5, 0.5, 0.5)))(gray)
    assert out.shape == (3, 8, 8)
    for channel, mean in enumerate((0.1, 0.2, 0.3)):
        assert torch.allclose(out[channel], torch.full((8, 8), (0.2 - mean) / 0.5), atol=1e-5)
    color = Image.new("RGB", (8, 8), (200, 100, 50))
    out = eval_transform(Preprocessing(8, (0.5,), (0.5,), channels=1))(color)
    luma = (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255  # ITU-R 601, as torchvision weighs
    assert out.shape == (1, 8, 8)
    assert torch.allclose(out, torch.full((1, 8, 8), (luma - 0.5) / 0.5), atol=2 / 255 / 0.5)


def test_preprocessing_round_trips_through_json():
    preprocessing = imagenet_preprocessing(160)
    assert preprocessing.resize == 183
    restored = Preprocessing.from_dict(json.loads(json.dumps(preprocessing.to_dict())))
    assert restored == preprocessing
