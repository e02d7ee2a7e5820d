"""Shared fixtures; the helpers themselves live in ``tests/helpers.py``."""
import pytest
from helpers import make_tiny_shapes


@pytest.fixture(scope='session')
def tiny_shapes(tmp_path_factory) -> str:
    """16 training and 8 validation images of 96 px."""
    return make_tiny_shapes(str(tmp_path_factory.mktemp('shapes')))
