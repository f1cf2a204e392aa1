# Argument factory of the DCN family tests: a call's configuration and its random tensors.
import dataclasses
from typing import Tuple

import numpy as np
import torch

from deformconv._geometry import output_size

# Offsets of "small" calls lie in [-2, 2] px; "large" ones have a magnitude in [8, 16) px.
SMALL, LARGE = "small", "large"


@dataclasses.dataclass(frozen=True)
class Call:
    """A dcnv3 / dcnv4 call: sizes and static arguments (``kwargs`` for the op)."""

    n: int = 2
    h: int = 5
    w: int = 6
    group: int = 2
    depth: int = 3  # group channels D
    kernel: Tuple[int, int] = (3, 3)
    stride: Tuple[int, int] = (1, 1)
    padding: Tuple[int, int] = (1, 1)
    dilation: Tuple[int, int] = (1, 1)
    offset_scale: float = 1.0
    remove_center: bool = False

    @property
    def points(self) -> int:
        return self.kernel[0] * self.kernel[1] - int(self.remove_center)

    @property
    def out_hw(self) -> Tuple[int, int]:
        return (
            output_size(self.h, self.kernel[0], self.stride[0], self.padding[0], self.dilation[0]),
            output_size(self.w, self.kernel[1], self.stride[1], self.padding[1], self.dilation[1]),
        )

    @property
    def length(self) -> int:
        """DCNv4's offset_mask last dim: G*3P rounded up to a multiple of 8."""
        return (self.group * 3 * self.points + 7) // 8 * 8

    @property
    def kwargs(self) -> dict:
        return dict(
            kernel_size=self.kernel,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            group=self.group,
            offset_scale=self.offset_scale,
            remove_center=self.remove_center,
        )

    def tensors(self, dtype=torch.float64, spread=SMALL, seed=0, position_dtype=None):
        """Random (input ``[N, H, W, G*D]``, offset ``[N, Ho, Wo, G*P*2]``, mask
        ``[N, Ho, Wo, G*P]``): input in ``dtype``, offset and mask in ``position_dtype``
        (default: ``dtype``). Values are drawn in float64, then rounded once."""
        rng = np.random.default_rng(seed)
        ho, wo = self.out_hw
        gp = self.group * self.points
        x = rng.standard_normal((self.n, self.h, self.w, self.group * self.depth))
        if spread == SMALL:
            offset = rng.uniform(-2.0, 2.0, (self.n, ho, wo, 2 * gp))
        else:
            size = (self.n, ho, wo, 2 * gp)
            offset = rng.uniform(8.0, 16.0, size) * rng.choice([-1.0, 1.0], size)
        mask = rng.uniform(0.0, 1.0, (self.n, ho, wo, gp))
        position_dtype = position_dtype or dtype
        return (
            torch.from_numpy(x).to(dtype),
            torch.from_numpy(offset).to(position_dtype),
            torch.from_numpy(mask).to(position_dtype),
        )

    def pack(self, offset, mask, garbage=float("nan")):
        """DCNv4's offset_mask ``[N, Ho, Wo, L]`` from DCNv3's offset and mask: per group 2P
        offsets then P mask values, the padding columns filled with ``garbage``."""
        n, ho, wo, _ = offset.shape
        g, p = self.group, self.points
        packed = torch.cat(
            [offset.reshape(n, ho, wo, g, 2 * p), mask.reshape(n, ho, wo, g, p)], dim=-1
        ).reshape(n, ho, wo, g * 3 * p)
        pad = packed.new_full((n, ho, wo, self.length - g * 3 * p), garbage)
        return torch.cat([packed, pad], dim=-1)

    def unpack(self, offset_mask):
        """The inverse of :meth:`pack`: (offset, mask) views of an offset_mask-shaped tensor."""
        n, ho, wo, _ = offset_mask.shape
        g, p = self.group, self.points
        packed = offset_mask[..., : g * 3 * p].reshape(n, ho, wo, g, 3 * p)
        return (
            packed[..., : 2 * p].reshape(n, ho, wo, g * 2 * p),
            packed[..., 2 * p :].reshape(n, ho, wo, g * p),
        )


# The sweep: odd sizes, group channels 1, 3, 16 and 71, stride 2, dilation 2,
# offset_scale 2.0, remove_center, non-square kernels, a 1x1 kernel.
SWEEP = {
    "default": Call(),
    "odd_sizes_d1": Call(h=7, w=5, group=3, depth=1),
    "d16": Call(h=4, w=5, group=2, depth=16),
    "d71": Call(n=1, h=3, w=4, group=1, depth=71),
    "stride2": Call(h=7, w=6, stride=(2, 2)),
    "dilation2": Call(h=6, w=7, dilation=(2, 2), padding=(2, 2)),
    "offset_scale2": Call(offset_scale=2.0),
    "remove_center": Call(remove_center=True, group=3, depth=2),
    "kernel_3x5": Call(kernel=(3, 5), padding=(1, 2), group=1, depth=3),
    "kernel_2x3_mixed": Call(kernel=(2, 3), stride=(1, 2), padding=(0, 1), dilation=(2, 1)),
    "kernel_1x1": Call(kernel=(1, 1), padding=(0, 0), group=4, depth=1),
    "remove_center_5x3": Call(kernel=(5, 3), padding=(2, 1), remove_center=True),
}
