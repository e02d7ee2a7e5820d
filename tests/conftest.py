"""Shared fixtures; the helpers themselves live in ``tests/helpers.py``."""
import os.path as osp
import sys

import pytest

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))

from helpers import (PYTHON, ROOT, SHAPES_CONFIG, free_port,  # noqa: E402,F401
                     make_tiny_shapes, run_env, tiny_config)


@pytest.fixture(scope='session')
def tiny_shapes(tmp_path_factory) -> str:
    """16 training and 8 validation images of 96 px."""
    return make_tiny_shapes(str(tmp_path_factory.mktemp('shapes')))
