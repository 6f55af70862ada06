"""Published ImageNet weights: records, download into the cache, conversion and loading.

No network: each test serves reference files, generated in their native formats (a torchvision
state dict saved with torch.save, a Keras HDF5 weights file in the official layout), from a
server on 127.0.0.1, and points copies of the real records at it. The references have random
weights, BN statistics far from 0 and 1 and a random BN affine part, and logits that depend on
the input, so a mis-mapped tensor or a wrong padding or BN epsilon shows in the logits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from published_files import (
    TOLERANCE,
    calibrate_batch_norm,
    keras_reference,
    logits_of,
    max_difference,
    record_of,
    serve,
    torchvision_reference,
    use_records,
    write_image,
    write_imagenet_folder,
)
from torchvision.transforms.v2 import functional as TF

import mobilenets.zoo.download as download_module
from mobilenets import create_model
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.models import build_model
from mobilenets.engine.checkpoint import STATE_FILE, Checkpoint
from mobilenets.tasks.classification.evaluate import evaluate_imagenet
from mobilenets.tasks.classification.train import fit, train_config
from mobilenets.zoo.pretrained import (
    OURS,
    RECORDS,
    find_record,
    imagenet_categories,
    imagenet_synsets,
    list_weights,
)
from mobilenets.zoo.registry import TFSLIM_V1, TFSLIM_V2, TFSLIM_V3, resolve_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    folder = tmp_path_factory.mktemp("references")
    return {"torchvision": torchvision_reference(folder), "keras": keras_reference(folder)}


@pytest.fixture
def torchvision_served(server, references, monkeypatch):
    reference = references["torchvision"]
    record = record_of("torchvision", "mobilenet_v2_1.0_224", "IMAGENET1K_V1")
    local = serve(server, record, reference.served_name, reference.body, reference.sha256[:8])
    use_records(monkeypatch, local)
    return local


@pytest.fixture
def keras_served(server, references, monkeypatch):
    reference = references["keras"]
    record = record_of("keras", "mobilenet_v2_0.35_96")
    local = serve(server, record, reference.path.name, reference.body, None)
    use_records(monkeypatch, local)
    return local


# --- Downloading and loading published weights -------------------------------------------------


def test_torchvision_weights_download_once_and_compute_torchvisions_logits(
    server, references, torchvision_served, tmp_path
):
    reference = references["torchvision"]
    model = create_model("mobilenet_v2_1.0_224", weights="torchvision", progress=False)
    assert server.requests == [(reference.served_name, None)]
    assert max_difference(model, reference) <= TOLERANCE
    assert not model.training
    assert model.weights_record == torchvision_served
    assert model.weights_record.source == "torchvision"
    assert (model.config.padding, model.config.bn_eps) == ("symmetric", 1e-5)
    cached = tmp_path / "cache" / "torchvision" / reference.served_name
    assert cached.read_bytes() == reference.body

    again = create_model("mobilenet_v2_1.0_224", weights="torchvision", progress=False)
    assert len(server.requests) == 1  # verified cache hit: no request
    assert max_difference(again, reference) <= TOLERANCE


def test_keras_weights_pin_their_digest_and_refuse_a_changed_file(
    server, references, keras_served, tmp_path
):
    reference = references["keras"]
    model = create_model("mobilenet_v2_0.35_96", weights="keras", progress=False)
    assert max_difference(model, reference) <= TOLERANCE
    assert (model.config.padding, model.config.bn_eps) == ("same", 1e-3)
    assert model.weights_record.source == "keras"
    cached = tmp_path / "cache" / "keras" / reference.path.name
    pin = cached.with_name(cached.name + ".sha256")
    assert pin.read_text().strip() == reference.sha256 == download_module.file_digest(cached)
    assert len(server.requests) == 1

    create_model("mobilenet_v2_0.35_96", weights="keras", progress=False)
    assert len(server.requests) == 1  # the pinned copy is reused

    with open(cached, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(MobileNetsError, match="changed") as error:
        create_model("mobilenet_v2_0.35_96", weights="keras", progress=False)
    assert reference.sha256 in str(error.value)  # the pinned digest, to compare by hand
    assert len(server.requests) == 1


def test_a_file_that_does_not_match_the_published_digest_is_refused(
    server, references, monkeypatch, tmp_path
):
    reference = references["torchvision"]
    wrong = "00000000" if not reference.sha256.startswith("00000000") else "ffffffff"
    record = record_of("torchvision", "mobilenet_v2_1.0_224", "IMAGENET1K_V1")
    use_records(monkeypatch, serve(server, record, reference.served_name, reference.body, wrong))
    with pytest.raises(MobileNetsError, match=f"corrupt.*expected {wrong}"):
        create_model("mobilenet_v2_1.0_224", weights="torchvision", progress=False)
    folder = tmp_path / "cache" / "torchvision"
    assert not (folder / reference.served_name).exists()
    assert list(folder.iterdir()) == []  # nor a partial file


def test_a_download_cut_half_way_resumes(server, references, torchvision_served):
    reference = references["torchvision"]
    server.drops = 1
    model = create_model("mobilenet_v2_1.0_224", weights="torchvision", progress=False)
    half = len(reference.body) // 2
    assert server.requests == [
        (reference.served_name, None),
        (reference.served_name, f"bytes={half}-"),
    ]
    assert max_difference(model, reference) <= TOLERANCE


def test_a_damaged_cached_file_with_a_published_digest_is_downloaded_again(
    server, references, torchvision_served, tmp_path, caplog
):
    reference = references["torchvision"]
    create_model("mobilenet_v2_1.0_224", weights="torchvision", progress=False)
    cached = tmp_path / "cache" / "torchvision" / reference.served_name
    cached.write_bytes(reference.body[:1000])
    model = create_model("mobilenet_v2_1.0_224", weights="torchvision", progress=False)
    assert [range_ for _, range_ in server.requests] == [None, None]  # whole file, twice
    assert cached.read_bytes() == reference.body
    assert any("does not match" in message for message in caplog.messages)
    assert max_difference(model, reference) <= TOLERANCE


@pytest.mark.parametrize(
    "name, timm_name, suffix",
    [
        # Hugging Face hub: no digest published, so the first download's is pinned.
        ("mobilenet_v1_1.0_224", "mobilenetv1_100", ".safetensors"),
        # A GitHub release named as torchvision names files: with a sha256 prefix.
        ("mobilenet_v2_0.5_224", "mobilenetv2_050", ".pth"),
    ],
)
def test_timm_weights_load_from_both_kinds_of_url(
    server, monkeypatch, tmp_path, name, timm_name, suffix
):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    reference = timm.create_model(timm_name)
    calibrate_batch_norm(reference, torch.randn(8, 3, 64, 64))
    path = tmp_path / f"{timm_name}{suffix}"
    if suffix == ".safetensors":
        save_file(reference.state_dict(), path)
    else:
        torch.save(reference.state_dict(), path)
    body = path.read_bytes()
    prefix = hashlib.sha256(body).hexdigest()[:8]
    record = record_of("timm", name)
    if suffix == ".safetensors":
        assert record.sha256 is None
        # Every hub file is model.safetensors: the cache names it after its repository.
        served = record.url.split("/", 3)[3]  # timm/REPO/resolve/main/model.safetensors
        local, cached_name = serve(server, record, served, body, None), f"{record.tag}.safetensors"
    else:
        cached_name = f"{timm_name}-{prefix}.pth"
        local = serve(server, record, cached_name, body, prefix)
    use_records(monkeypatch, local)

    model = create_model(name, weights="timm", progress=False)
    assert model.weights_record.source == "timm"
    assert (model.config.padding, model.config.bn_eps) == ("symmetric", 1e-5)
    inputs = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference.eval()(inputs)
    assert (logits_of(model, inputs) - expected).abs().max().item() <= TOLERANCE
    cached = tmp_path / "cache" / "timm" / cached_name
    assert cached.read_bytes() == body
    assert cached.with_name(cached.name + ".sha256").is_file() == (record.sha256 is None)


def test_a_tag_picks_that_file(server, references, monkeypatch):
    reference = references["torchvision"]
    config = resolve_config("mobilenet_v2_1.0_224")
    assert find_record(config, "torchvision").tag == "IMAGENET1K_V1"
    chosen = find_record(config, "torchvision:IMAGENET1K_V2")
    assert (chosen.tag, chosen.file_name) == ("IMAGENET1K_V2", "mobilenet_v2-7ebf99e0.pth")
    assert chosen.preprocessing.resize == 232

    name = "mobilenet_v2-v2-" + reference.served_name  # another file for the other tag
    use_records(monkeypatch, serve(server, chosen, name, reference.body, reference.sha256[:8]))
    model = create_model(
        "mobilenet_v2_1.0_224", weights="torchvision:IMAGENET1K_V2", progress=False
    )
    assert server.requests == [(name, None)]
    assert model.weights_record.tag == "IMAGENET1K_V2"


@pytest.mark.parametrize(
    "name, weights, listed",
    [
        (
            "mobilenet_v2_1.0_224",
            "torchvision:IMAGENET1K_V9",
            ["IMAGENET1K_V9", "mobilenet_v2 alpha 1 [IMAGENET1K_V1]", "[IMAGENET1K_V2]"],
        ),
        (
            "mobilenet_v1_1.0_224",
            "torchvision",
            ["mobilenet_v1_1.0_224", "mobilenet_v2 alpha 1 [IMAGENET1K_V1]"],
        ),
        (
            "mobilenet_v2_1.3_160",
            "keras",
            ["mobilenet_v2_1.3_160", "mobilenet_v2_1.3_224", "mobilenet_v1_0.25_128"],
        ),
        ("mobilenet_v2_0.35_96", "timm:ra_in1k", ["mobilenetv2_100.ra_in1k"]),
    ],
)
def test_weights_nobody_publishes_are_an_error_listing_what_exists(server, name, weights, listed):
    with pytest.raises(MobileNetsError, match="publishes no weights") as error:
        create_model(name, weights=weights, progress=False)
    for text in listed:
        assert text in str(error.value)
    assert server.requests == []


def test_unknown_source_is_an_error():
    with pytest.raises(MobileNetsError, match="torchvision, timm, keras.*'tensorflow'"):
        find_record(resolve_config("mobilenet_v2_1.0_224"), "tensorflow")


def test_published_weights_for_another_classifier_point_to_reset_classifier(server):
    with pytest.raises(MobileNetsError, match=r"num_classes=10.*reset_classifier"):
        create_model("mobilenet_v2_0.35_96", num_classes=10, weights="keras", progress=False)
    assert server.requests == []


def test_a_run_fine_tunes_published_weights_with_their_numerics_and_input_scaling(
    server, references, keras_served, tmp_path, caplog
):

    for split, per_class in (("train", 4), ("val", 2)):
        for label in range(3):
            folder = tmp_path / "data" / split / f"class_{label}"
            folder.mkdir(parents=True)
            for index in range(per_class):
                write_image(folder / f"{index}.png", (110, 100), seed=100 * label + index)
    config = train_config(
        "modern",
        model="mobilenet_v2",
        alpha=0.35,
        resolution=96,
        data=str(tmp_path / "data"),
        weights="keras",
        epochs=1,
        batch_size=4,
        lr=1e-12,
        warmup_epochs=0.0,
        ema_decay=0.0,
        augment="basic",
        random_erasing=0.0,
    )
    with caplog.at_level(logging.INFO, logger="mobilenets"):
        fit(config, tmp_path / "run", progress=False)
    lines = caplog.messages
    assert (
        lines[0] == "starting from the weights 'keras'; a new classifier for 3 classes (the "
        "weights have 1000)"
    )
    assert len(server.requests) == 1
    run = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert (run["model_config"]["padding"], run["model_config"]["bn_eps"]) == ("same", 1e-3)
    # Keras's models read [-1, 1], not ImageNet's mean and std.
    assert run["preprocessing"]["mean"] == run["preprocessing"]["std"] == [0.5, 0.5, 0.5]
    trained = torch.load(tmp_path / "run" / STATE_FILE, weights_only=True)
    published = create_model("mobilenet_v2_0.35_96", weights="keras", progress=False)
    for key, value in published.state_dict().items():
        if value.ndim == 4:  # conv weights; one epoch at lr 1e-12 leaves them in place
            assert torch.allclose(trained["model"][key], value, atol=1e-6), key


# --- Foreign files given by path ---------------------------------------------------------------


def test_a_local_torchvision_file_loads_offline(references):
    reference = references["torchvision"]
    model = create_model("mobilenet_v2_1.0_224", weights=reference.path)
    assert max_difference(model, reference) <= TOLERANCE
    assert (model.config.padding, model.config.bn_eps) == ("symmetric", 1e-5)


def test_a_local_keras_file_loads_offline(references):
    reference = references["keras"]
    model = create_model("mobilenet_v2_0.35_96", weights=str(reference.path))
    assert max_difference(model, reference) <= TOLERANCE
    assert (model.config.padding, model.config.bn_eps) == ("same", 1e-3)
    # Symmetric padding would be off by one pixel at every stride-2 conv: the settings matter.
    symmetric = create_model("mobilenet_v2_0.35_96")
    symmetric.load_state_dict(model.state_dict())
    assert (logits_of(symmetric, reference.inputs) - reference.logits).abs().max() > 1e-2


def test_a_file_for_another_alpha_is_refused_listing_shapes(references):
    with pytest.raises(MobileNetsError, match="another shape") as error:
        create_model("mobilenet_v2_0.5_224", weights=references["torchvision"].path)
    message = str(error.value)
    assert "features.0.0.weight (32, 3, 3, 3)" in message
    assert "(16, 3, 3, 3)" in message


# --- The records ---------------------------------------------------------------------------------


IMAGENET_RECORDS = [record for record in RECORDS if record.source != OURS]


@pytest.mark.parametrize(
    "record", IMAGENET_RECORDS, ids=lambda r: f"{r.source}-{r.model_name}-{r.tag}"
)
def test_record_is_complete_and_consistent(record):
    """The ecosystems' records; ours is held to its file in tests/zoo/test_published_weights."""
    assert record.url.startswith("https://")
    assert record.license.strip()
    v3 = record.arch.startswith("mobilenet_v3")
    if record.source == "keras" or record.tag.startswith("tf_"):  # TF-trained weights
        numerics = ("same", 1e-3)
    elif record.source == "torchvision" and v3:  # torchvision's V3: BatchNorm2d(eps=0.001)
        numerics = ("symmetric", 1e-3)
    else:
        numerics = ("symmetric", 1e-5)
    assert (record.padding, record.bn_eps) == numerics
    assert record.config().padding == numerics[0] and record.config().bn_eps == numerics[1]
    assert record.preprocessing.resolution == record.resolution
    assert record.preprocessing.resize > record.resolution  # resize, then center crop
    if v3 and record.source == "timm":  # no figure pinned: the record says where they are
        assert (record.top1, record.top5, record.reference) == (None, None, "timm pretrained_cfg")
    elif record.arch.startswith("mobilenet_v4"):  # timm's repository's figures, at train size
        assert 60 < record.top1 < record.top5 < 100 and "results-imagenet.csv" in record.reference
    elif v3 and record.source == "keras":  # TF-slim's V3 table has top-1 only
        assert 60 < record.top1 < 80 and record.top5 is None
    else:
        assert 0 < record.top5 - record.top1 < 30
    published_prefix = re.search(r"-([0-9a-f]{8})\.pth$", record.file_name)
    if record.source == "keras":
        assert record.sha256 is None  # Keras publishes no digest: the first download is pinned
        assert record.preprocessing.mean == record.preprocessing.std == (0.5, 0.5, 0.5)
    elif record.source == "torchvision":
        assert record.sha256 == published_prefix[1]
    else:
        assert record.sha256 == (published_prefix[1] if published_prefix else None)


def test_keras_records_are_tf_slims_tables():
    tables = {
        ("mobilenet_v1", alpha, resolution): (top1, top5)
        for alpha, resolution, _, _, top1, top5 in TFSLIM_V1
    }
    tables |= {
        ("mobilenet_v2", alpha, resolution): (top1, top5)
        for alpha, resolution, _, _, top1, top5 in TFSLIM_V2
    }
    keras = [r for r in list_weights("keras") if not r.arch.startswith("mobilenet_v3")]
    assert len(keras) == len(tables) == len(TFSLIM_V1) + len(TFSLIM_V2)
    found = {(r.arch, r.alpha, r.resolution): (r.top1, r.top5) for r in keras}
    assert found == tables
    # The file names keras.applications downloads.
    names = {r.model_name: r.url for r in keras}
    assert names["mobilenet_v2_0.35_96"] == (
        "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96.h5"
    )
    assert names["mobilenet_v1_0.25_128"] == (
        "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/"
        "mobilenet_2_5_128_tf.h5"
    )


def test_keras_v3_records_are_tf_slims_v3_table():
    keras = [r for r in list_weights("keras") if r.arch.startswith("mobilenet_v3")]
    found = {(r.arch, r.minimalistic, r.alpha): r.top1 for r in keras}
    assert found == {(arch, mini, alpha): top1 for arch, mini, alpha, _, _, top1 in TFSLIM_V3}
    assert {r.model_name: r.url for r in keras}["mobilenet_v3_large_0.75_224"] == (
        "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v3/"
        "weights_mobilenet_v3_large_224_0.75_float.h5"
    )


def test_torchvision_records_agree_with_torchvision():
    from torchvision.models import (
        MobileNet_V2_Weights,
        MobileNet_V3_Large_Weights,
        MobileNet_V3_Small_Weights,
    )

    enums = {
        "mobilenet_v2": MobileNet_V2_Weights,
        "mobilenet_v3_large": MobileNet_V3_Large_Weights,
        "mobilenet_v3_small": MobileNet_V3_Small_Weights,
    }
    records = list_weights("torchvision")
    assert [(r.arch, r.tag) for r in records] == [
        (arch, w.name) for arch, enum in enums.items() for w in enum
    ]
    for record in records:
        weights = enums[record.arch][record.tag]
        with torch.device("meta"):  # the record's widths are torchvision's: the same params
            model = build_model(record.config())
        assert sum(p.numel() for p in model.parameters()) == weights.meta["num_params"]
        transforms = weights.transforms()
        metrics = weights.meta["_metrics"]["ImageNet-1K"]
        assert record.url == weights.url
        assert (record.top1, record.top5) == (metrics["acc@1"], metrics["acc@5"])
        assert record.preprocessing.resize == transforms.resize_size[0]
        assert record.preprocessing.resolution == transforms.crop_size[0]
        assert record.preprocessing.mean == tuple(transforms.mean)
        assert record.preprocessing.std == tuple(transforms.std)
        assert record.preprocessing.interpolation == transforms.interpolation.value


def test_timm_records_agree_with_timm():
    import timm

    for record in list_weights("timm"):
        cfg = timm.models.get_pretrained_cfg(record.tag)
        assert record.url in (
            cfg.url,
            f"https://huggingface.co/{cfg.hf_hub_id}/resolve/main/model.safetensors",
        )
        assert record.resolution == cfg.input_size[-1]
        assert record.preprocessing.resize == round(record.resolution / cfg.crop_pct)
        assert (record.preprocessing.mean, record.preprocessing.std) == (cfg.mean, cfg.std)
        assert record.preprocessing.interpolation == cfg.interpolation


def test_preprocessing_scales_with_the_resolution():
    record = record_of("torchvision", "mobilenet_v2_1.0_224", "IMAGENET1K_V1")
    assert record.preprocessing_for(224) == record.preprocessing
    at_160 = record.preprocessing_for(160)
    assert (at_160.resolution, at_160.resize) == (160, 183)  # 256 * 160 / 224 = 182.9
    assert (at_160.mean, at_160.interpolation) == (record.preprocessing.mean, "bilinear")
    keras = record_of("keras", "mobilenet_v2_1.0_224")
    assert keras.preprocessing.resize == 256  # 224 / 0.875
    assert keras.preprocessing_for(96).resize == 110  # 96 / 0.875 = 109.7


def test_imagenet_class_ids_and_names():
    synsets, names = imagenet_synsets(), imagenet_categories()
    assert len(synsets) == len(set(synsets)) == 1000
    assert synsets[0] == "n01440764" and synsets[-1] == "n15075141"
    assert list(synsets) == sorted(synsets)  # ImageNet's class order is the WordNet ids' order
    assert all(re.fullmatch(r"n\d{8}", synset) for synset in synsets)
    assert len(names) == 1000 and names[0] == "tench" and names[-1] == "toilet tissue"


# --- Evaluating on an ImageNet-layout folder -----------------------------------------------------


def imagenet_checkpoint(model, preprocessing) -> Checkpoint:
    """An ImageNet model as pretrained_checkpoint builds one, around any model."""
    return Checkpoint(
        model,
        imagenet_categories(),
        preprocessing,
        Path("rigged.safetensors"),
        class_ids=imagenet_synsets(),
    )


def test_evaluate_imagenet_maps_wordnet_folders_to_imagenet_classes(references, tmp_path):
    classes = (7, 42, 913)  # not 0, 1, 2: a folder's ImageFolder index must not pass for it
    paths = write_imagenet_folder(tmp_path / "val", classes, per_class=3)
    labels = torch.tensor([index for index in classes for _ in range(3)])
    preprocessing = record_of("keras", "mobilenet_v2_0.35_96").preprocessing
    model = create_model("mobilenet_v2_0.35_96", weights=references["keras"].path).eval()

    def preprocess(path):  # written out here, not Preprocessing.eval_transform
        with Image.open(path) as image:
            pixels = TF.pil_to_tensor(image.convert("RGB"))
        pixels = TF.resize(pixels, [preprocessing.resize], antialias=True)
        pixels = TF.center_crop(pixels, [preprocessing.resolution])
        return TF.normalize(pixels.float() / 255, preprocessing.mean, preprocessing.std)

    inputs = torch.stack([preprocess(path) for path in paths])
    # Rig the classifier so that the images get the classes in `designed`: 6 of 9 right.
    designed = labels.clone()
    designed[[1, 4, 8]] = torch.tensor([42, 913, 7])
    with torch.no_grad():
        features = model.forward_head(model.forward_features(inputs), pre_logits=True)
        targets = 10 * (designed[:, None] == torch.tensor(classes)).double()
        rows = (torch.linalg.pinv(features.double()) @ targets).T.float()
        model.classifier.weight.zero_()
        model.classifier.bias.fill_(-20.0)
        model.classifier.weight[list(classes)] = rows
        model.classifier.bias[list(classes)] = 0.0
        predicted = model(inputs).argmax(1)
    assert predicted.tolist() == designed.tolist()
    expected_top1 = (predicted == labels).float().mean().item()
    assert expected_top1 == pytest.approx(6 / 9)

    checkpoint = imagenet_checkpoint(model, preprocessing)
    result = evaluate_imagenet(checkpoint, tmp_path, batch_size=4, device="cpu", progress=False)
    assert result.count == 9
    assert result.top1 == pytest.approx(expected_top1)
    assert result.top5 == 1.0  # the three rigged classes lead every image's logits
    assert result.confusion[42, 913].item() == 1 and result.confusion[7, 7].item() == 2


def test_evaluate_imagenet_refuses_folders_that_are_not_wordnet_ids(tmp_path):
    write_imagenet_folder(tmp_path, (0,), per_class=1)
    (tmp_path / "cats").mkdir()
    write_image(tmp_path / "cats" / "cat.png", (64, 64), seed=0)
    model = create_model("mobilenet_v2_0.35_96").eval()
    checkpoint = imagenet_checkpoint(
        model, record_of("keras", "mobilenet_v2_0.35_96").preprocessing
    )
    with pytest.raises(MobileNetsError, match="WordNet ids.*found cats"):
        evaluate_imagenet(checkpoint, tmp_path, device="cpu", progress=False)
