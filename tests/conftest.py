# Shared pytest fixtures: the devices with built kernels (helpers and markers live in helpers.py).
import pytest
from helpers import DEVICES


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param
