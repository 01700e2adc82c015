"""Meta (Facebook) Conversions API: each delivery as one server event of the source's dataset.

`POST {base}/{pixel_id}/events?access_token=...`; Meta deduplicates on `event_id`
(the delivery id) together with `event_name`.
"""

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from tracker.outbound.payloads import (
    DeliveryFacts,
    OutboundRequest,
    PlatformUrls,
    Problems,
    SourcePostback,
    epoch_millis,
    epoch_seconds,
    json_number,
    json_request,
    match_keys,
    preset_value,
    url_template_problem,
)

DEFAULT_EVENT = "Purchase"
ACTION_SOURCE = "website"
CLICK_PARAM = "fbclid"


def credential_problems(credentials: Mapping[str, str]) -> Problems:
    """Format checks of the Meta credentials (presence is checked by the caller)."""
    problems: Problems = []
    pixel_id = credentials.get("pixel_id")
    if pixel_id and not (pixel_id.isascii() and pixel_id.isdigit()):
        problems.append(("credentials.pixel_id", "must be the dataset (pixel) ID, digits only"))
    page = credentials.get("event_source_url")
    if page:
        problem = url_template_problem(page)
        if problem is None and "{" in page:
            problem = "must be a plain URL without macros"
        if problem is not None:
            problems.append(("credentials.event_source_url", problem))
    return problems


def build(postback: SourcePostback, facts: DeliveryFacts, urls: PlatformUrls) -> OutboundRequest:
    """The Conversions API request for one delivery."""
    credentials = postback.credentials
    value = preset_value(postback, facts)
    fbclid = facts.click_params.get(CLICK_PARAM)
    # The fbc format: version "fb", subdomain index 1, the click's time in ms, the fbclid.
    fbc = ("fbc", f"fb.1.{epoch_millis(facts.click_time)}.{fbclid}") if fbclid else None
    user_data = match_keys(
        facts, "Meta", CLICK_PARAM, fbc, "client_ip_address", "client_user_agent"
    )
    event: dict[str, Any] = {
        "event_name": facts.event or DEFAULT_EVENT,
        "event_time": epoch_seconds(facts.conversion_time),
        "action_source": ACTION_SOURCE,
        "event_id": str(facts.delivery_id),
        "user_data": user_data,
    }
    if credentials.get("event_source_url"):
        event["event_source_url"] = credentials["event_source_url"]
    if value is not None:
        event["custom_data"] = {"value": json_number(value), "currency": facts.currency}
    payload: dict[str, Any] = {"data": [event]}
    if credentials.get("test_event_code"):
        payload["test_event_code"] = credentials["test_event_code"]
    pixel_id = quote(credentials["pixel_id"], safe="")
    token = quote(credentials["access_token"], safe="")
    url = f"{urls.meta.rstrip('/')}/{pixel_id}/events?access_token={token}"
    return json_request(url, payload, facts.delivery_id)
