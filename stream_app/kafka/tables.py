"""Faust tables whose changelog writes can be awaited.

A table write goes to the changelog through Faust's producer buffer, drained by a background
task. Before committing offsets Faust flushes that buffer, but ``ProducerBuffer.flush`` gives
up after 0.1 s without a send (``flush_atmost``), and does not wait for the message its task
has taken and not yet handed to the client. So on a busy machine an offset can be committed
before the state it covers is on the broker, and a crash then loses that state for good: the
restarted worker recovers the older state and does not read the message again. Seen in the
kill -9 test (tests/integration/test_reliability.py): an event applied, its offset committed,
its state write never in the changelog.

The worker therefore waits for each batch's changelog writes (:meth:`ConfirmedTable.confirm`)
before the batch is acked; only acked messages have their offsets committed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust


class ConfirmedTable(faust.Table):  # type: ignore[type-arg]
    """A table that remembers its changelog writes until :meth:`confirm` has awaited them."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._unconfirmed: list[asyncio.Future[Any]] = []

    def send_changelog(self, *args: Any, **kwargs: Any) -> Any:
        fut = super().send_changelog(*args, **kwargs)
        self._unconfirmed.append(fut)
        return fut

    def confirm(self) -> asyncio.Future[Any]:
        """Every changelog write made so far, as one awaitable: done when the broker has them
        all (raises if one failed). Writes made after this call are not part of it."""
        pending, self._unconfirmed = self._unconfirmed, []
        return asyncio.gather(*pending)
