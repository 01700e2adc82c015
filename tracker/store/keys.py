"""Every Redis key and channel the tracker uses, in one place."""

CLICK_PREFIX = "clk:"
CLICK_STREAM = "stream:clicks"
SINK_GROUP = "sink"
CONFIG_VERSION = "cfg:version"
# Signatures of signed postbacks already accepted, kept for twice the replay window.
SIGNATURE_PREFIX = "pbsig:"
SIGNATURE_TTL = 600


def click_key(click_id: str) -> str:
    return CLICK_PREFIX + click_id


# Failed unauthenticated postbacks per client address, per one-minute window.
FAILED_POSTBACK_PREFIX = "pbfail:"


def failed_postback_key(address: str, window: int) -> str:
    return f"{FAILED_POSTBACK_PREFIX}{window}:{address}"
