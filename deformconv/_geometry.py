# Pure-Python argument helpers (no torch, no NumPy) shared by the op, the NumPy oracle, the tests and the benchmarks.
"""The Python copies of two small rules, each written once here.

The C++ side has its own, in ``csrc/common/geometry.h`` (``conv_output_size``), next to the
argument checks the op runs.
"""

from __future__ import annotations

import numbers
from typing import Sequence, Tuple, Union

IntPair = Union[int, Sequence[int]]

__all__ = ["IntPair", "pair", "output_size"]


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def pair(value: IntPair, name: str) -> Tuple[int, int]:
    """(h, w) from an int or a pair of ints.

    Raises:
        TypeError: ``value`` is neither an int nor a sequence (a float, a bool, None).
        ValueError: a sequence that is not two ints.
    Both messages name the argument.

    Example::

        >>> pair(3, "stride"), pair((1, 2), "padding")
        ((3, 3), (1, 2))
    """
    if _is_int(value):
        return (int(value), int(value))
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a pair of ints: got {value!r}")
    try:
        items = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be an int or a pair of ints: got {value!r}") from None
    if len(items) != 2 or not all(_is_int(v) for v in items):
        raise ValueError(f"{name} must be an int or a pair of ints (h, w): got {value!r}")
    return (int(items[0]), int(items[1]))


def output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Output length of one spatial dimension of a convolution:
    ``(size + 2*padding - dilation*(kernel - 1) - 1) // stride + 1``.

    Example::

        >>> output_size(7, 3, stride=2, padding=1, dilation=1)
        4
    """
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
