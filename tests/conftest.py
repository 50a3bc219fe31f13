"""Suite-wide settings.

Hypothesis profiles: the suite's default, and ``--hypothesis-profile=deep`` for long runs of
the model-based test (tests/unit/test_model.py) and the other property tests. No deadline
in either: speed is measured by the benchmarks, and ``make test`` runs two test processes
at once, so an example's wall time says more about the neighbour than about the code.

Order: tests marked ``slow(seconds)`` run first, longest first (the seconds: measured on a
2-core machine, ``--durations``). ``make test`` hands tests to its processes in collection
order, two at a time (``--dist load --maxschedchunk 2``); the longest started first leave
the many short ones to fill in after them, so both processes finish at about the same time
instead of one running a three-minute test at the end alone.
"""

import pytest
from hypothesis import settings

settings.register_profile("default", deadline=None)
settings.register_profile("deep", deadline=None, max_examples=5000, stateful_step_count=60)
settings.load_profile("default")


def _expected_s(item: pytest.Item) -> float:
    mark = item.get_closest_marker("slow")
    return float(mark.args[0]) if mark is not None and mark.args else 0.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: -_expected_s(item))  # stable: the rest keep their order
