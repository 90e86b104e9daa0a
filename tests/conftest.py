"""Test configuration: hypothesis profiles and shared fixtures.

Profiles: ``ci`` (selected automatically by Hypothesis when CI is set) is extended with a modest
example count so the whole suite stays within minutes on two cores; ``dev`` is the local default
(no deadline: first calls may compile or warm caches).  Select with ``--hypothesis-profile``.
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", settings.get_profile("ci"), max_examples=25)
settings.register_profile(
    "dev", deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow]
)
if not os.environ.get("CI") and not os.environ.get("HYPOTHESIS_PROFILE"):
    settings.load_profile("dev")


@pytest.fixture
def rng():
    return np.random.default_rng(20261129)
