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
# What the sink reads, by a short name, and the group it reads each as.
SINK_STREAMS = {
    "clicks": (CLICK_STREAM, SINK_GROUP),
    "postbacks": (POSTBACK_STREAM, POSTBACK_GROUP),
}


# A visitor's last click on a campaign; expires with the campaign's unique window.
UNIQUE_VISITOR_PREFIX = "uv:"


def unique_visitor_key(campaign_id: int, visitor_id: str) -> str:
    return f"{UNIQUE_VISITOR_PREFIX}{campaign_id}:{visitor_id}"


def click_key(click_id: str) -> str:
    return CLICK_PREFIX + click_id


def auth_failures_key(address: str) -> str:
    return AUTH_FAILURES_PREFIX + address


# Failed unauthenticated postbacks per client address, per one-minute window.
FAILED_POSTBACK_PREFIX = "pbfail:"


def failed_postback_key(address: str, window: int) -> str:
    return f"{FAILED_POSTBACK_PREFIX}{window}:{address}"


# A dashboard session (by the hash of its cookie), expiring after the idle timeout.
UI_SESSION_PREFIX = "ui:session:"


def ui_session_key(session_hash: str) -> str:
    return UI_SESSION_PREFIX + session_hash
