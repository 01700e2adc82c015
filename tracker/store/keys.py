"""Every Redis key and channel the tracker uses, in one place."""

CLICK_PREFIX = "clk:"
CLICK_STREAM = "stream:clicks"
SINK_GROUP = "sink"
CONFIG_VERSION = "cfg:version"
# Signatures of signed postbacks already accepted, kept for twice the replay window.
SIGNATURE_PREFIX = "pbsig:"
SIGNATURE_TTL = 600
# Postbacks that arrived while Postgres was unavailable, applied by the sink in order.
POSTBACK_STREAM = "stream:postbacks"
POSTBACK_GROUP = "postbacks"


def click_key(click_id: str) -> str:
    return CLICK_PREFIX + click_id
