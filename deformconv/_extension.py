# Loads the compiled extension deformconv._C if it is there; a clear error for anyone who calls the op without it.
"""torchvision's ``_HAS_OPS`` pattern: ``import deformconv`` (and the NumPy oracle
``deformconv.reference``) work without the compiled extension; calling the op does not."""

try:
    from . import _C  # noqa: F401  (loads the shared library: registers the ops and kernels)
except ImportError as error:  # no build, or the source tree shadows the installed package
    HAS_OPS = False
    _LOAD_ERROR = error
else:
    HAS_OPS = True
    _LOAD_ERROR = None


def require() -> None:
    """Raises RuntimeError, saying how to build it, when the extension is not loaded."""
    if not HAS_OPS:
        raise RuntimeError(
            f"deformconv's compiled extension deformconv._C could not be loaded next to "
            f"{__file__} ({_LOAD_ERROR}). In a source checkout, install it with "
            "`pip install --no-build-isolation -e .`: the editable install builds the extension "
            "into the checkout, so imports work from the repository root too. A non-editable "
            "install works only from other directories."
        )
