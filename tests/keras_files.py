"""Keras reference models and the Keras 2 weights layout, for the conversion tests.

Keras 3 cannot write the layout of the official download files (``mobilenet_1_0_224_tf.h5``,
``mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5``): those come from Keras 2's
``save_weights_to_hdf5_group``, which :func:`write_keras2_weights` reproduces with h5py.

keras is imported inside the functions: the test module sets ``KERAS_BACKEND`` first.
"""

from __future__ import annotations

import math
import os
import re

import h5py
import numpy as np

KERAS2_VERSION = b"2.2.4"


def keras_mobilenet(arch: str, alpha: float, resolution: int, seed: int, **options):
    """A Keras applications MobileNet (V1), MobileNetV2 or MobileNetV3Large/Small with every
    weight drawn from ``seed``; ``options`` go to the application (V3: ``minimalistic``,
    ``include_preprocessing``, which adds a Rescaling layer that reads [0, 255] pixels).

    Keras's own initializers are not used: they draw from Keras's global seed (so the file would
    change from run to run), and glorot on a depthwise kernel ``(3, 3, C, 1)`` counts a fan-in of
    9C, which shrinks the signal by about C/2 per block until the logits no longer depend on the
    input, and a mis-mapped conv would not show.
    """
    import keras

    application = {
        "mobilenet_v1": keras.applications.MobileNet,
        "mobilenet_v2": keras.applications.MobileNetV2,
        "mobilenet_v3_large": keras.applications.MobileNetV3Large,
        "mobilenet_v3_small": keras.applications.MobileNetV3Small,
    }[arch]
    model = application(
        alpha=alpha,
        weights=None,
        input_shape=(resolution, resolution, 3),
        classifier_activation=None,
        **options,
    )
    randomize_keras(model, np.random.default_rng(seed))
    return model


def randomize_keras(model, rng: np.random.Generator) -> None:
    """He-normal kernels (fan-in), random biases, and non-trivial BN statistics: gamma ~ N(1, .3),
    beta ~ N(0, .3), moving mean ~ N(0, .5), moving variance ~ U(.5, 2)."""
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "BatchNormalization":
            (channels,) = layer.weights[0].shape
            layer.set_weights(
                [
                    rng.normal(1.0, 0.3, channels),
                    rng.normal(0.0, 0.3, channels),
                    rng.normal(0.0, 0.5, channels),
                    rng.uniform(0.5, 2.0, channels),
                ]
            )
        elif layer.weights:
            values = []
            for variable in layer.weights:
                shape = tuple(variable.shape)
                if variable.name == "kernel":
                    # A depthwise kernel (kh, kw, C, 1) sees kh*kw inputs per output.
                    fan_in = math.prod(shape[:2] if kind == "DepthwiseConv2D" else shape[:-1])
                    values.append(rng.normal(0.0, math.sqrt(2.0 / fan_in), shape))
                else:
                    values.append(rng.normal(0.0, 0.1, shape))
            layer.set_weights(values)


def keras_logits(model, images: np.ndarray) -> np.ndarray:
    """Inference-mode logits for NHWC images."""
    import keras

    return keras.ops.convert_to_numpy(model(images, training=False))


def keras2_weight_name(layer, variable, layer_name: str | None = None) -> bytes:
    """The name Keras 2 (TensorFlow) gave a weight: ``conv_dw_1/depthwise_kernel:0``.

    Keras 2 called a DepthwiseConv2D's kernel ``depthwise_kernel``; Keras 3 calls it ``kernel``.
    """
    name = variable.name
    if type(layer).__name__ == "DepthwiseConv2D" and name == "kernel":
        name = "depthwise_kernel"
    return f"{layer_name or layer.name}/{name}:0".encode()


# Keras 3 renamed MobileNetV3's layers (no "/" in names); the official files (Keras 2) have:
KERAS2_V3_NAMES = (
    (r"^conv(_\d)?_bn$", r"Conv\1/BatchNorm"),
    (r"^conv(_\d)?$", r"Conv\1"),
    (r"^logits$", "Logits"),
    (r"^(expanded_conv(?:_\d+)?)_(expand|depthwise|project)_bn$", r"\1/\2/BatchNorm"),
    (r"^(expanded_conv(?:_\d+)?)_(expand|depthwise|project)$", r"\1/\2"),
    (r"^(expanded_conv(?:_\d+)?)_squeeze_excite_conv(_1)?$", r"\1/squeeze_excite/Conv\2"),
)


def keras2_v3_layer_name(name: str) -> str:
    """The Keras 2 name of a Keras 3 MobileNetV3 layer: ``expanded_conv_3_depthwise_bn`` ->
    ``expanded_conv_3/depthwise/BatchNorm``."""
    for pattern, replacement in KERAS2_V3_NAMES:
        renamed, count = re.subn(pattern, replacement, name)
        if count:
            return renamed
    return name


def write_keras2_weights(path: str | os.PathLike, model, rename=lambda name: name) -> None:
    """Write ``model``'s weights as Keras 2's ``save_weights_to_hdf5_group`` did.

    The root lists every layer, weightless ones included, in model order; each layer has a group
    whose ``weight_names`` attribute lists its weights in Keras's order (kernel, bias; gamma,
    beta, moving_mean, moving_variance), each stored at its full name, so the ``/`` in
    ``conv1/kernel:0`` nests a subgroup exactly as Keras 2's files do. ``rename`` gives a
    layer's Keras 2 name (``keras2_v3_layer_name`` for MobileNetV3).
    """
    with h5py.File(path, "w") as handle:
        layer_names = [rename(layer.name) for layer in model.layers]
        handle.attrs["layer_names"] = [name.encode("utf8") for name in layer_names]
        handle.attrs["backend"] = b"tensorflow"
        handle.attrs["keras_version"] = KERAS2_VERSION
        for layer, layer_name in zip(model.layers, layer_names, strict=True):
            group = handle.require_group(layer_name)  # Keras 2's "/" names nest groups
            names = [keras2_weight_name(layer, v, layer_name) for v in layer.weights]
            group.attrs["weight_names"] = names
            for name, value in zip(names, layer.get_weights(), strict=True):
                group.create_dataset(name, data=value)
