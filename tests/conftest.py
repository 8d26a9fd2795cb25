"""Shared test configuration.

Hypothesis profiles: `dev` (default, random) and `ci` (derandomized; selected when CI=true or
with HYPOTHESIS_PROFILE=ci), both without deadlines since finite differences vary in cost.
"""
import os

from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
