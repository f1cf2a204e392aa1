# Shared pytest fixtures: devices with built kernels, the CUDA host emulation (helpers and markers: helpers.py).
import os

import pytest
from helpers import DEVICES


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(scope="session")
def emu():
    """The CUDA backend host-emulated on the CPU (cuda_helpers.load_emulation); skipped with
    DEFORMCONV_SKIP_EMULATION=1."""
    if os.environ.get("DEFORMCONV_SKIP_EMULATION") == "1":
        pytest.skip("DEFORMCONV_SKIP_EMULATION=1")
    from cuda_helpers import load_emulation

    return load_emulation()
