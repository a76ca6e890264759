import os

import numpy as np
import pytest
from hypothesis import settings

# "ci": few examples and no deadline (the first example pays numba compilation or cache load).
settings.register_profile("ci", max_examples=15, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def rng():
    return np.random.default_rng(0)
