"""Hypothesis profiles: the suite's default, and ``--hypothesis-profile=deep`` for long runs
of the model-based test (tests/unit/test_model.py) and the other property tests."""

from hypothesis import settings

settings.register_profile("default", settings.get_profile("default"))
settings.register_profile("deep", max_examples=5000, stateful_step_count=60)
