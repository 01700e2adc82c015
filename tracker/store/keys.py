"""Every Redis key and channel the tracker uses, in one place."""

CLICK_PREFIX = "clk:"
CLICK_STREAM = "stream:clicks"
SINK_GROUP = "sink"
CONFIG_VERSION = "cfg:version"
# Failed admin authentications per client address; expires with its counting window.
AUTH_FAILURES_PREFIX = "authfail:"
# Postbacks that arrived while Postgres was unavailable, applied by the sink in order.
POSTBACK_STREAM = "stream:postbacks"
POSTBACK_GROUP = "postbacks"


def click_key(click_id: str) -> str:
    return CLICK_PREFIX + click_id


def auth_failures_key(address: str) -> str:
    return AUTH_FAILURES_PREFIX + address


# Failed unauthenticated postbacks per client address, per one-minute window.
FAILED_POSTBACK_PREFIX = "pbfail:"


def failed_postback_key(address: str, window: int) -> str:
    return f"{FAILED_POSTBACK_PREFIX}{window}:{address}"
