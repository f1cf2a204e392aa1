# What deformable layers learn: their offsets recorded by hooks, composed back to input pixels, summarised and drawn.
"""Sampling locations and offset statistics of deformable layers.

* :func:`record_stages` runs a model once with forward hooks and returns its spatial layers
  (plain convolutions, pools, deformable convolutions with the offsets and masks they used)
  in the order they ran.
* :func:`compose_sampling` maps chosen output positions of a deformable layer back through
  those layers to input pixels: one point per tap of every deformable layer on the way, so
  two stacked 3x3 deformable layers give 9 x 9 = 81 points per position (the picture of the
  DCN paper), each with the product of the masks on its path.
* :func:`sampling_locations` does both for a model and an image batch, next to the fixed
  grid the same layers sample with zero offsets.
* :func:`offset_statistics`: per deformable layer, mean and 95th percentile of ``|offset|``,
  mask mean, and the share of samples outside the layer's input.
* :func:`plot_sampling_locations` draws the points over the images (needs matplotlib,
  imported only there; without it the function warns and returns None).

Coordinates are ``(y, x)`` = (row, column) in pixels with pixel centres at integers, the
op's and the NumPy oracle's convention (:mod:`deformconv.reference`).

How points are composed. A stack of deformable layers with nothing nonlinear in between is
linear in its input, and a deformable layer reads a map by bilinear sampling; so each output
reads, for each path of taps through the layers, a weighted mix of input pixels. The point
of a path is the centre of that mix (its weighted mean position) and its weight is the mix's
total weight: the product of the masks on the path (and of the bilinear weights that fall
inside the maps; zero padding reads nothing). At one layer this is exactly where the op
samples and with what mask, ``q*s - p + t*d + offset``; an upper layer that samples between
the lower layer's output pixels reads the bilinear mix of their samples. For stacked
deformable layers this is exact: fed a linear ramp, the stack outputs these points (the tests
check it against the NumPy oracle and the op). Fixed layers in between (``nn.Conv2d``,
``nn.AvgPool2d``, ``nn.MaxPool2d``) count as a uniform average over their window: exact
for an average pool, the centre of the receptive field for a plain conv (whose weights
differ per channel), an approximation for a max pool (which picks one pixel of its window).
The computation runs the ramp through the layers: every stage maps ``3 * K`` maps
(mass-weighted row, mass-weighted column, mass per path) of its input to those of its output.

With offset groups, the points of offset group 0 are composed; the statistics cover all groups.
"""

from .plot import plot_sampling_locations
from .sampling import SamplingLocations, compose_sampling, sampling_locations
from .stages import Stage, record_stages
from .statistics import offset_statistics

__all__ = [
    "SamplingLocations",
    "Stage",
    "compose_sampling",
    "offset_statistics",
    "plot_sampling_locations",
    "record_stages",
    "sampling_locations",
]
