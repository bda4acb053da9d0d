import os
import sys

import pytest
import torch

# Without a GPU the Triton kernels run in Triton's CPU interpreter, which
# must be selected before any kernel module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')

# Test helpers live next to the tests; mmsegmentation installs a top-level
# ``tests`` package, so they are imported by module name, not as ``tests.x``.
sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)
