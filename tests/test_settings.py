"""Settings that cannot work together are refused at start, naming the settings."""

import pytest
from pydantic import ValidationError

from tracker.settings import Settings


def test_a_click_must_outlast_its_replicas_wait():
    assert Settings(redis_wait_replicas=1).redis_wait_timeout_ms == 100  # the defaults fit
    assert Settings(redis_wait_replicas=1, redis_wait_timeout_ms=400, click_write_timeout=0.85)
    with pytest.raises(ValidationError, match=r"TRACKER_CLICK_WRITE_TIMEOUT .*\(0.45 s\)"):
        Settings(redis_wait_replicas=1, redis_wait_timeout_ms=200)
    # Without WAIT the wait's timeout does not matter.
    assert Settings(redis_wait_timeout_ms=5000).click_write_timeout == 0.25
