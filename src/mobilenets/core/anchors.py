"""SSD default boxes (Liu et al. 2016, section 2.2), computed from the feature-map sizes alone.

A default box is ``(cx, cy, w, h)`` in image-normalized coordinates. The boxes of one map share
its grid: the box of anchor type ``a`` at row ``i``, column ``j`` of an ``f x f`` map is centred
at ``((j + 0.5) / f, (i + 0.5) / f)``. Each anchor type is a (scale, aspect ratio) pair with
``w = scale * sqrt(ratio)`` and ``h = scale / sqrt(ratio)``, so ratio 2 is a wide box.

Order, which the heads' outputs follow: map by map, then row-major over locations (y, then x),
then anchor type within a location. This is TF's ``MultipleGridAnchorGenerator`` order and the
order of reshaping a head output ``(N, anchors * k, H, W)`` to ``(N, H * W * anchors, k)``.

Scales, as TF's ``create_ssd_anchors`` and SSD eq. 4 give them for m maps:

    s_k = min_scale + (max_scale - min_scale) * k / (m - 1),   k = 0 .. m - 1
    s_m = 1.0                                                   (for the extra box of the last map)

Every map has one box per aspect ratio at s_k, plus an extra ratio-1 box at sqrt(s_k * s_{k+1}).
The first map follows TF's ``reduce_boxes_in_lowest_layer`` (on in every TF SSD config) when
``lowest_scale`` is given: its ratio-1 box takes scale ``lowest_scale`` (0.1) instead of s_0, and
it has no extra box, so SSDLite's 19x19 map has three boxes per location: (0.1, 1), (0.2, 2),
(0.2, 1/2).

Boxes are not clipped to the image by default, as in TF's SSD anchor generator (torchvision's
DefaultBoxGenerator clips): on the 1x1 map the ratio-2 box at scale 0.95 is 1.34 wide, and
clipping would shrink it to 1.0, shifting the box the regression is relative to. ``clip=True``
clips the corners to [0, 1] and recentres, as torchvision does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from mobilenets.core.errors import MobileNetsError

BoxShape = tuple[float, float]  # (scale, aspect ratio)


def ssd_scales(num_maps: int, min_scale: float, max_scale: float) -> tuple[float, ...]:
    """s_0 .. s_{m-1}, linearly spaced from min_scale to max_scale (SSD eq. 4, TF), then 1.0."""
    if not isinstance(num_maps, int) or num_maps < 1:
        raise MobileNetsError(f"num_maps must be an integer >= 1, got {num_maps!r}")
    if not 0 < min_scale <= max_scale <= 1:
        raise MobileNetsError(
            f"scales must satisfy 0 < min_scale <= max_scale <= 1, got min_scale={min_scale!r}, "
            f"max_scale={max_scale!r}"
        )
    if num_maps == 1:
        return (min_scale, 1.0)
    step = (max_scale - min_scale) / (num_maps - 1)
    return (*(min_scale + step * k for k in range(num_maps)), 1.0)


def box_shapes(
    aspect_ratios: Sequence[Sequence[float]],
    min_scale: float,
    max_scale: float,
    lowest_scale: float | None,
) -> tuple[tuple[BoxShape, ...], ...]:
    """The (scale, aspect ratio) of each anchor type, per map, by the rules in the module
    docstring; ``aspect_ratios`` has one tuple per map."""
    scales = ssd_scales(len(aspect_ratios), min_scale, max_scale)
    shapes = []
    for k, ratios in enumerate(aspect_ratios):
        if k == 0 and lowest_scale is not None:
            shapes.append(tuple((lowest_scale if r == 1 else scales[0], r) for r in ratios))
        else:
            extra = (math.sqrt(scales[k] * scales[k + 1]), 1.0)
            shapes.append((*((scales[k], r) for r in ratios), extra))
    return tuple(shapes)


def default_boxes(
    map_sizes: Sequence[int],
    shapes: Sequence[Sequence[BoxShape]],
    *,
    clip: bool = False,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Default boxes ``[A, 4]`` as (cx, cy, w, h) in [0, 1] image units, in the module's order.

    ``map_sizes`` are the sides of the square feature maps; ``shapes[k]`` the (scale, aspect
    ratio) of each anchor type of map k. Computed in float64, returned as ``dtype``.
    """
    if len(map_sizes) != len(shapes):
        raise MobileNetsError(
            f"one list of box shapes per feature map: {len(map_sizes)} maps, "
            f"{len(shapes)} lists of shapes"
        )
    boxes = []
    for size, map_shapes in zip(map_sizes, shapes, strict=True):
        if not isinstance(size, int) or size < 1:
            raise MobileNetsError(f"a feature map side is an integer >= 1, got {size!r}")
        if not map_shapes:
            raise MobileNetsError(f"every feature map needs at least one box shape, got {shapes}")
        for scale, ratio in map_shapes:
            if not scale > 0 or not ratio > 0:
                raise MobileNetsError(
                    f"box scales and aspect ratios must be positive, got ({scale!r}, {ratio!r})"
                )
        centres = (torch.arange(size, dtype=torch.float64) + 0.5) / size
        cy, cx = torch.meshgrid(centres, centres, indexing="ij")  # row-major: y, then x
        wh = torch.tensor(
            [(s * math.sqrt(r), s / math.sqrt(r)) for s, r in map_shapes], dtype=torch.float64
        )
        locations = torch.stack([cx.reshape(-1), cy.reshape(-1)], dim=1)  # [f*f, 2]
        per_map = torch.cat(
            [
                locations[:, None, :].expand(-1, len(map_shapes), -1),
                wh[None, :, :].expand(size * size, -1, -1),
            ],
            dim=2,
        )  # [f*f, anchors, 4]: location-major, anchor type inner
        boxes.append(per_map.reshape(-1, 4))
    result = torch.cat(boxes)
    if clip:
        corners = torch.cat(
            [result[:, :2] - result[:, 2:] / 2, result[:, :2] + result[:, 2:] / 2], 1
        )
        corners = corners.clamp(0.0, 1.0)
        result = torch.cat(
            [(corners[:, :2] + corners[:, 2:]) / 2, corners[:, 2:] - corners[:, :2]], 1
        )
    return result.to(dtype)
