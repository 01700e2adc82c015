"""Log volume during outages: a recurring failure is a few lines, not one per event."""

import logging

from tracker.logs import OncePerInterval, Throttled


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def collecting(name: str) -> tuple[logging.Logger, Collect]:
    logger = logging.getLogger(name)
    logger.propagate = False
    handler = Collect()
    logger.handlers[:] = [handler]
    return logger, handler


def test_throttled_reports_once_per_interval_and_counts_the_rest():
    logger, seen = collecting("tracker.test.throttled")
    throttled = Throttled(logger, interval=0)
    throttled.warning("down: %s", "a")
    assert [r.getMessage() for r in seen.records] == ["down: a"]
    quiet = Throttled(logger, interval=3600)
    for i in range(5):
        quiet.warning("down: %s", i)
    assert [r.getMessage() for r in seen.records] == ["down: a", "down: 0"]
    quiet._next = 0.0  # the interval has passed
    quiet.warning("down: %s", "again")
    assert seen.records[-1].getMessage() == "down: again (and 4 more like it since the last report)"


def test_once_per_interval_drops_repeats_and_tracebacks():
    logger, seen = collecting("tracker.test.pool")
    logger.addFilter(OncePerInterval(interval=3600))
    for _ in range(10):
        try:
            raise ConnectionRefusedError("connect failed")
        except ConnectionRefusedError:
            logger.exception("Failed to restore the pool connection floor")
    [record] = seen.records
    assert record.exc_info is None
    assert record.getMessage() == (
        "Failed to restore the pool connection floor: ConnectionRefusedError('connect failed')"
    )
