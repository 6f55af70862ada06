"""MobileNetV4 weights from timm: each of the five models' files, converted by
mobilenets.zoo.convert through the key map (not by position), computes timm's logits in our model
(max abs difference 1e-4); a file of another V3/V4 variant is refused naming both; timm's V4
records carry its preprocessing, and ``weights="timm"`` loads them end to end.

References get random weights, BN statistics and layer scales and are built once per module;
64x64 inputs show equality as well as the native sizes would.
"""

import functools
import hashlib

import pytest
import timm
import torch
from published_files import serve, use_records
from random_weights import randomize_torch
from safetensors.torch import save, save_file

from mobilenets import create_model
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.models import build_model
from mobilenets.zoo.convert import convert_file, convert_state_dict, key_map
from mobilenets.zoo.pretrained import find_record, list_weights
from mobilenets.zoo.registry import get_entry, list_models, resolve_config

RESOLUTION = 64
TOLERANCE = 1e-4  # max abs logit difference, fp32
LOGIT_SCALE = 4.0  # the references' largest logit
MODELS = ("conv_small", "conv_medium", "conv_large", "hybrid_medium", "hybrid_large")
NATIVE = {
    "conv_small": 224,
    "conv_medium": 256,
    "conv_large": 384,
    "hybrid_medium": 256,
    "hybrid_large": 384,
}

pytestmark = pytest.mark.usefixtures("one_thread")


def images(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, RESOLUTION, RESOLUTION, generator=torch.Generator().manual_seed(seed))


@functools.cache
def reference(model: str) -> tuple[dict, torch.Tensor]:
    """timm's ``mobilenetv4_<model>`` with random weights, BN statistics and layer scales (timm
    starts them at 1e-5, which would hide a mis-mapped block), its state dict and logits."""
    torch.manual_seed(0)
    net = randomize_torch(timm.create_model(f"mobilenetv4_{model}", pretrained=False))
    with torch.no_grad():
        for name, tensor in net.named_parameters():
            if name.endswith("layer_scale.gamma"):
                tensor.uniform_(0.1, 0.3)
        scale = LOGIT_SCALE / net(images()).abs().max()
        net.classifier.weight *= scale
        net.classifier.bias *= scale
        logits = net(images())
    assert (logits[0] - logits[1]).abs().max() > 1e-2  # the input matters
    return net.state_dict(), logits


def our_config(model: str):
    return resolve_config(f"mobilenet_v4_{model}", resolution=RESOLUTION)


@pytest.mark.parametrize("model", MODELS)
def test_a_timm_file_gives_timms_logits(model, tmp_path):
    state, expected = reference(model)
    path = tmp_path / "model.safetensors"  # timm's hub files are safetensors
    save_file({key: value.contiguous() for key, value in state.items()}, path)
    ours, config, report = convert_file(path, "timm", our_config(model))
    entries = key_map(config, "timm")
    assert report.converted == len(entries) == len({entry.theirs for entry in entries})
    assert report.relayout == {"conv1x1_oihw_linear": 1}  # conv_head, a 1x1 conv -> Linear
    net = build_model(config).eval()
    net.load_state_dict(ours, strict=True)
    with torch.no_grad():
        error = (net(images()) - expected).abs().max().item()
    assert error <= TOLERANCE, error


def test_the_key_map_follows_timms_stages():
    theirs = {entry.ours: entry.theirs for entry in key_map(our_config("hybrid_medium"), "timm")}
    assert theirs["blocks.0.conv_exp.weight"] == "blocks.0.0.conv_exp.weight"
    assert theirs["blocks.1.bn_start.running_var"] == "blocks.1.0.dw_start.bn.running_var"
    assert theirs["blocks.1.layer_scale.weight"] == "blocks.1.0.layer_scale.gamma"
    assert theirs["head.bn.weight"] == "blocks.4.0.bn1.weight"  # the 960 conv: its own stage
    assert theirs["pre_logits.bn.bias"] == "norm_head.bias"
    mqa = [key for key in theirs if ".key_down." in key]
    assert mqa and all(".attn.key.down_conv." in theirs[key] for key in mqa)
    small = {entry.ours: entry.theirs for entry in key_map(our_config("conv_small"), "timm")}
    assert small["blocks.0.conv.weight"] == "blocks.0.0.conv.weight"
    assert small["blocks.3.bn.weight"] == "blocks.1.1.bn1.weight"


def test_another_v4_variants_file_is_refused_naming_both():
    state, _ = reference("conv_medium")
    with pytest.raises(MobileNetsError) as error:
        convert_state_dict(state, our_config("conv_small"), "timm")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(
        "timm weights do not fit mobilenet_v4_conv_small_1.0_64: the file holds "
        "mobilenet_v4_conv_medium weights, not mobilenet_v4_conv_small's; "
    )


def test_a_v3_file_for_a_v4_model_and_back_is_refused_naming_both():
    v3 = timm.create_model("mobilenetv3_large_100", pretrained=False).state_dict()
    with pytest.raises(MobileNetsError, match="holds mobilenet_v3_large weights, not mobilenet_v4"):
        convert_state_dict(v3, our_config("hybrid_large"), "timm")
    state, _ = reference("conv_small")
    v3_config = resolve_config("mobilenet_v3_small", resolution=RESOLUTION)
    with pytest.raises(
        MobileNetsError, match="holds mobilenet_v4_conv_small weights, not mobilenet_v3_small's"
    ):
        convert_state_dict(state, v3_config, "timm")


@pytest.mark.parametrize("source", ["torchvision", "keras"])
def test_only_timm_publishes_v4(source):
    with pytest.raises(MobileNetsError, match="published by timm only"):
        key_map(our_config("conv_small"), source)


# --- records and named variants -----------------------------------------------------------------


def test_every_named_v4_variant_has_a_timm_file_at_its_size():
    names = list_models("mobilenet_v4_*")
    assert len(names) == 11
    for model, native in NATIVE.items():
        first = next(name for name in names if name.startswith(f"mobilenet_v4_{model}_"))
        assert first == f"mobilenet_v4_{model}_1.0_{native}"  # the native size first
        assert get_entry(first).paper[0].source == "Qin et al. 2024, Table 6"
    for name in names:
        config = resolve_config(name)
        assert find_record(config, "timm").resolution == config.resolution, name


@pytest.mark.parametrize(
    "name, tag",
    [
        ("mobilenet_v4_conv_small_1.0_224", "mobilenetv4_conv_small.e2400_r224_in1k"),
        ("mobilenet_v4_conv_small_1.0_256", "mobilenetv4_conv_small.e3600_r256_in1k"),
        ("mobilenet_v4_conv_medium_1.0_224", "mobilenetv4_conv_medium.e500_r224_in1k"),
        ("mobilenet_v4_hybrid_medium_1.0_256", "mobilenetv4_hybrid_medium.e200_r256_in12k_ft_in1k"),
        ("mobilenet_v4_hybrid_large_1.0_384", "mobilenetv4_hybrid_large.ix_e600_r384_in1k"),
    ],
)
def test_weights_timm_is_timms_default_file_at_the_models_size(name, tag):
    assert find_record(resolve_config(name), "timm").tag == tag


def test_the_v4_records_carry_timms_preprocessing():
    records = [record for record in list_weights("timm") if record.arch.startswith("mobilenet_v4")]
    assert len(records) == 14  # every 1000-class V4 file timm publishes
    for record in records:
        cfg = timm.models.get_pretrained_cfg(record.tag).to_dict()
        assert cfg["num_classes"] == record.num_classes == 1000
        size = cfg["input_size"][-1]
        test_size = (cfg.get("test_input_size") or cfg["input_size"])[-1]
        test_crop = cfg.get("test_crop_pct") or cfg["crop_pct"]
        for preprocessing, resolution, crop_pct in (
            (record.preprocessing, size, cfg["crop_pct"]),
            (record.test_preprocessing, test_size, test_crop),
        ):
            assert preprocessing.resolution == resolution, record.tag
            assert preprocessing.resize == round(resolution / crop_pct), record.tag
            assert preprocessing.mean == pytest.approx(cfg["mean"])
            assert preprocessing.std == pytest.approx(cfg["std"])
            assert preprocessing.interpolation == cfg["interpolation"] == "bicubic"
        assert record.resolution == size and 60 < record.top1 < record.top5 < 100
        assert "results-imagenet.csv" in record.reference
        assert (
            record.url == f"https://huggingface.co/timm/{record.tag}/resolve/main/model.safetensors"
        )
        assert record.to_dict()["test_preprocessing"]["resolution"] == test_size


def test_published_v4_weights_load_end_to_end(server, monkeypatch):
    state, expected = reference("conv_small")
    body = save({key: value.contiguous() for key, value in state.items()})
    published = find_record(resolve_config("mobilenet_v4_conv_small_1.0_224"), "timm")
    local = serve(server, published, published.file_name, body, hashlib.sha256(body).hexdigest())
    use_records(monkeypatch, local)
    ours = create_model("mobilenet_v4_conv_small_1.0_224", weights="timm", progress=False)
    assert ours.weights_record == local and not ours.training
    assert (ours.config.padding, ours.config.bn_eps) == ("symmetric", 1e-5)
    with torch.no_grad():
        assert (ours(images()) - expected).abs().max() <= TOLERANCE
