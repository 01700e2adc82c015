"""Every Redis key and channel the tracker uses, in one place.

Click keys carry a hash tag naming the click's shard (`{s5}`): on a Redis Cluster a
click's record, its stream entry and its visitor's unique-click key share a slot,
so one script call stores them. A single Redis is the same P shards on one node.
"""

from tracker.domain.clickid import MAX_SHARDS, click_shard

CLICK_PREFIX = "clk:"
# The click stream of shard n is `stream:clicks:{sn}`; the unsharded one held the
# clicks written before shards existed, and the sink drains it until it is empty.
CLICK_STREAM = "stream:clicks"
SINK_GROUP = "sink"
# Shards new clicks are spread over, unless settings say otherwise.
DEFAULT_SHARDS = 8
CONFIG_VERSION = "cfg:version"
# Failed admin authentications per client address; expires with its counting window.
AUTH_FAILURES_PREFIX = "authfail:"
# Postbacks that arrived while Postgres was unavailable, applied by the sink in order.
POSTBACK_STREAM = "stream:postbacks"
POSTBACK_GROUP = "postbacks"


def shard_tag(shard: int) -> str:
    return f"{{s{shard}}}"


# `shard_tag` of every shard a click id can name, made once: the click path's keys.
SHARD_TAGS = tuple(shard_tag(n) for n in range(MAX_SHARDS))


def click_stream(shard: int) -> str:
    return f"{CLICK_STREAM}:{shard_tag(shard)}"


def click_streams(shards: int) -> list[str]:
    """Every stream the sink reads clicks from: one per shard, and the legacy one."""
    return [*(click_stream(n) for n in range(shards)), CLICK_STREAM]


def sink_streams(shards: int = DEFAULT_SHARDS) -> dict[str, tuple[list[str], str]]:
    """What the sink reads, by a short name: its streams and the group it reads them as."""
    return {
        "clicks": (click_streams(shards), SINK_GROUP),
        "postbacks": ([POSTBACK_STREAM], POSTBACK_GROUP),
    }


# A visitor's last click on a campaign; expires with the campaign's unique window. In
# the shard of the visitor's clicks on the campaign (`visitor_shard`).
UNIQUE_VISITOR_PREFIX = "uv:"


def unique_visitor_key(campaign_id: int, visitor_id: str, shard: int = 0) -> str:
    return f"{UNIQUE_VISITOR_PREFIX}{shard_tag(shard)}:{campaign_id}:{visitor_id}"


def click_key(click_id: str, shard: int | None = None) -> str:
    """The record's key; `shard` when the caller has read it from the id already."""
    tag = SHARD_TAGS[click_shard(click_id) if shard is None else shard]
    return f"{CLICK_PREFIX}{tag}:{click_id}"


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
