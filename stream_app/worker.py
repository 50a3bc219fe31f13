"""Running a worker process: topic checks, the Faust worker, bounded shutdown."""

from __future__ import annotations

import logging
import os
import threading

import faust

from .config import Settings
from .kafka.clients import check_partitions, ensure_topics

log = logging.getLogger(__name__)


class BoundedWorker(faust.Worker):
    """A Faust worker whose shutdown on SIGINT/SIGTERM cannot hang.

    Faust/mode stop gracefully (offsets committed, tables flushed); if that has not finished
    within ``shutdown_timeout`` seconds the process exits anyway, so orchestrators and
    ``timeout`` never have to escalate to SIGKILL.
    """

    def __init__(self, *args: object, shutdown_timeout: float = 8.0, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._deadline_s = shutdown_timeout
        self._watchdog: threading.Timer | None = None

    def _arm(self, signame: str) -> None:
        if self._watchdog is None:
            log.info("%s received: stopping (at most %.0fs)", signame, self._deadline_s)
            self._watchdog = threading.Timer(self._deadline_s, self._expire)
            self._watchdog.daemon = True
            self._watchdog.start()

    def _expire(self) -> None:
        log.error("graceful shutdown exceeded %.0fs; exiting", self._deadline_s)
        logging.shutdown()
        os._exit(1)

    def _on_sigint(self) -> None:
        self._arm("SIGINT")
        super()._on_sigint()

    def _on_sigterm(self) -> None:
        self._arm("SIGTERM")
        super()._on_sigterm()


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
    from .app import Runtime
    from .segmentation.registry import build_segmentations

    configure_logging(settings.log_level)
    counts = ensure_topics(settings)
    check_partitions(settings, counts)
    for topic, n in counts.items():
        if topic == settings.input_topic and n != settings.partitions:
            log.warning("topic %s has %d partitions, SEGMENTER_PARTITIONS=%d: events are "
                        "re-keyed through %s (one extra hop)", topic, n, settings.partitions,
                        settings.routed_topic)
    rt = Runtime(settings, build_segmentations(settings))
    log.info("worker %s starting: broker %s, web on port %d, store %s, data dir %s",
             settings.app_id, settings.broker_url, settings.web_port, settings.store.value,
             settings.data_dir)
    worker = BoundedWorker(rt.app, loglevel=settings.log_level, quiet=True,
                           shutdown_timeout=settings.shutdown_timeout,
                           override_logging=False)
    worker.execute_from_commandline()
