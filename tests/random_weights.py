"""Random weights that make a mapping mistake visible in the logits."""

import math

from torch import nn


def randomize_batch_norm(model: nn.Module) -> None:
    """Non-trivial BN statistics, so that a mis-mapped BN layer would show in the logits."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            nn.init.normal_(module.weight, 1.0, 0.3)
            nn.init.normal_(module.bias, 0.0, 0.3)


def randomize_torch(model: nn.Module) -> nn.Module:
    """He-normal convs (fan-in), a random classifier bias, random BN statistics. torch's fan-out
    init counts a depthwise conv's fan as 9C, which with random BN statistics makes the logits
    almost independent of the input, so a mis-mapped conv would hardly show."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / module.weight[0].numel()))
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.bias, 0.0, 0.1)
    randomize_batch_norm(model)
    return model.eval()


def background_leaning_detector(
    num_classes: int, resolution: int, backbone: str = "mobilenet_v2", alpha: float = 0.35
) -> nn.Module:
    """SSDLite (on V2 0.35 unless ``backbone`` and ``alpha`` say otherwise) with random weights
    and BN statistics (seed 0) whose heads give logits of about 1 and favour the background: tens
    of (anchor, class) pairs per image pass postprocess's 0.01 score threshold and NMS has
    overlapping boxes of one class to suppress. ``num_classes`` counts the background and must
    be 5 (the class bias is written out)."""
    import torch

    from mobilenets.core.detection_spec import DetectionConfig
    from mobilenets.core.spec import ModelConfig
    from mobilenets.zoo.detectors import create_detector

    class_bias = torch.tensor([3.0, 0.0, -0.5, -1.0, -1.5])
    if num_classes != len(class_bias):
        raise ValueError(f"num_classes must be {len(class_bias)}, got {num_classes}")
    torch.manual_seed(0)
    config = DetectionConfig(ModelConfig(arch=backbone, alpha=alpha))
    model = create_detector(config, num_classes=num_classes, resolution=resolution)
    randomize_torch(model)
    with torch.no_grad():
        for head in (*model.class_heads, *model.box_heads):
            head.conv_pw.weight *= 0.2
        for head in model.class_heads:
            head.conv_pw.bias.copy_(class_bias.repeat(head.conv_pw.bias.numel() // num_classes))
    return model.eval()
