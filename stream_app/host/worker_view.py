"""What the web views, the clustering's model follower and the live definitions see of a
worker: two small interfaces, so none of them depends on the host (``stream_app.host.app``).

:class:`WorkerView` is read-only: the settings, the state as of the last batch handled, the
live figures. :class:`WorkerHost` adds what the model follower and the live definitions
need to act: the pipeline (the core) and :meth:`WorkerHost.sweep`, which runs a pipeline
call over every local customer and delivers its outputs as a batch's. ``Runtime``
implements both; nothing here is imported at run time by the host.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..config import Settings
    from ..core.pipeline import Pipeline, Processed
    from ..core.predictive.live import LivePredictions
    from ..core.processing import Step
    from ..core.segmentation.base import Segmentation
    from ..core.state.sizes import SegmentSizes
    from ..metrics import Metrics
    from ..web.timeseries import Sampler
    from .health import BrokerWatch


class WorkerView(Protocol):
    """A worker, read-only (the web views)."""

    settings: Settings
    started_at: float
    stats: Mapping[str, int]
    metrics: Metrics
    sampler: Sampler
    broker_watch: BrokerWatch
    predictions: LivePredictions | None
    segmentations: list[Segmentation]
    step: Step
    sizes: SegmentSizes  # customers per segment of each local partition
    # Faust's app: the web server the views register on, and its router to the other workers
    app: Any
    # the customer table as the worker reads it (the writes of batches in flight included)
    customer_states: Mapping[str, Any]

    @property
    def watermark(self) -> float: ...

    @property
    def table_name(self) -> str:
        """The customers table's name (requests for a key are routed to its owner by it)."""
        ...

    def ready(self) -> bool: ...

    def assigned(self) -> list[int]:
        """The partitions this worker owns."""
        ...

    def customer(self, customer_id: str) -> Any: ...

    def customer_ids(self) -> Iterable[str]: ...

    def event_time_now(self, wall: float | None = None) -> float: ...


class WorkerHost(WorkerView, Protocol):
    """A worker the model follower and the live definitions act through."""

    pipeline: Pipeline
    state_lock: asyncio.Lock
    routed_topic: Any  # where the admin's erase requests go (Faust's topic)

    async def sweep(self, work: Callable[[int, list[str], float], Processed],
                    start: Callable[[int], Processed | None] | None = None
                    ) -> list[Processed]: ...
