"""TikTok Events API 2.0 (`/event/track/`): each delivery as one web event of the source's pixel.

TikTok deduplicates on `event_id` (the delivery id) together with `event`.
"""

import re
from collections.abc import Mapping
from typing import Any

from tracker.outbound.payloads import (
    DeliveryFacts,
    OutboundRequest,
    PlatformUrls,
    Problems,
    SourcePostback,
    epoch_seconds,
    json_number,
    json_request,
    match_keys,
    preset_value,
)

DEFAULT_EVENT = "CompletePayment"
EVENT_SOURCE = "web"
CLICK_PARAM = "ttclid"
_PIXEL_CODE = re.compile(r"[A-Za-z0-9]{1,64}")


def credential_problems(credentials: Mapping[str, str]) -> Problems:
    """Format checks of the TikTok credentials (presence is checked by the caller)."""
    pixel_code = credentials.get("pixel_code")
    if pixel_code and not _PIXEL_CODE.fullmatch(pixel_code):
        return [("credentials.pixel_code", "must be the pixel code, letters and digits only")]
    return []


def build(postback: SourcePostback, facts: DeliveryFacts, urls: PlatformUrls) -> OutboundRequest:
    """The Events API request for one delivery."""
    credentials = postback.credentials
    value = preset_value(postback, facts)
    ttclid = facts.click_params.get(CLICK_PARAM)
    click_key = ("ttclid", ttclid) if ttclid else None
    user = match_keys(facts, "TikTok", CLICK_PARAM, click_key, "ip", "user_agent")
    event: dict[str, Any] = {
        "event": facts.event or DEFAULT_EVENT,
        "event_time": epoch_seconds(facts.conversion_time),
        "event_id": str(facts.delivery_id),
        "user": user,
    }
    if value is not None:
        event["properties"] = {"value": json_number(value), "currency": facts.currency}
    payload: dict[str, Any] = {
        "event_source": EVENT_SOURCE,
        "event_source_id": credentials["pixel_code"],
        "data": [event],
    }
    if credentials.get("test_event_code"):
        payload["test_event_code"] = credentials["test_event_code"]
    url = f"{urls.tiktok.rstrip('/')}/event/track/"
    return json_request(
        url, payload, facts.delivery_id, {"Access-Token": credentials["access_token"]}
    )
