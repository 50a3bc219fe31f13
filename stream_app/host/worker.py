"""Running a worker process: topic checks, the Faust worker, bounded shutdown
(:class:`.kafka.transport.BoundedWorker`)."""

from __future__ import annotations

import logging

from ..config import Settings
from .clients import check_partitions, ensure_topics
from .transport import BoundedWorker

log = logging.getLogger(__name__)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    # Faust/aiokafka are chatty at INFO; our own logger keeps INFO.
    for noisy in ("aiokafka", "faust", "mode", "kafka"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def run_worker(settings: Settings) -> None:
    """Run a worker until SIGINT/SIGTERM. Blocks."""
    from ..core.segmentation.registry import build_segmentations
    from .app import Runtime
    from .redefinition import startup_definitions

    configure_logging(settings.log_level)
    counts = ensure_topics(settings)
    check_partitions(settings, counts)
    for topic, n in counts.items():
        if topic == settings.input_topic and n != settings.partitions:
            log.warning("topic %s has %d partitions, SEGMENTER_PARTITIONS=%d: events are "
                        "re-keyed through %s (one extra hop)", topic, n, settings.partitions,
                        settings.routed_topic)
    # the definitions in force: the topic's newest, unless the file was edited since
    startup = startup_definitions(settings)
    rt = Runtime(settings, build_segmentations(settings, startup.definitions.segmentations),
                 startup)
    log.info("worker %s starting: broker %s, web on port %d, store %s, data dir %s",
             settings.app_id, settings.broker_url, settings.web_port, settings.store.value,
             settings.data_dir)
    worker = BoundedWorker(rt.app, loglevel=settings.log_level, quiet=True,
                           shutdown_timeout=settings.shutdown_timeout,
                           override_logging=False)
    worker.execute_from_commandline()
