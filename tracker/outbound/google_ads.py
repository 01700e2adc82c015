"""Google Ads offline click conversions (`uploadClickConversions`), one per delivery.

Google deduplicates on `orderId` (the delivery id) within the conversion action.
"""

from collections.abc import Mapping
from datetime import UTC
from typing import Any

from tracker.outbound.payloads import (
    DeliveryFacts,
    OutboundRequest,
    PayloadError,
    PlatformUrls,
    Problems,
    SourcePostback,
    json_number,
    json_request,
    preset_value,
)

CLICK_PARAM = "gclid"
# OAuth fields from which the sender gets an access token (and a new one each hour).
OAUTH_FIELDS = ("client_id", "client_secret", "refresh_token")


def customer_digits(customer_id: str) -> str:
    """A Google Ads customer id as the API wants it: "123-456-7890" -> "1234567890"."""
    return customer_id.replace("-", "")


def credential_problems(credentials: Mapping[str, str]) -> Problems:
    """Format checks of the Google Ads credentials (presence is checked by the caller)."""
    problems: Problems = []
    for name in ("customer_id", "login_customer_id"):
        value = credentials.get(name)
        if value and not _digits(customer_digits(value), 10):
            message = "must be a 10-digit customer id (dashes allowed)"
            problems.append((f"credentials.{name}", message))
    given = [name for name in OAUTH_FIELDS if credentials.get(name)]
    if given and len(given) < len(OAUTH_FIELDS):
        for name in OAUTH_FIELDS:
            if name not in given:
                problems.append((f"credentials.{name}", "required with the other OAuth fields"))
    elif not given and not credentials.get("access_token"):
        message = "required, or client_id, client_secret and refresh_token to refresh one"
        problems.append(("credentials.access_token", message))
    action = credentials.get("conversion_action_id")
    if action and not _digits(action):
        message = "must be the numeric id of the conversion action"
        problems.append(("credentials.conversion_action_id", message))
    return problems


def build(postback: SourcePostback, facts: DeliveryFacts, urls: PlatformUrls) -> OutboundRequest:
    """The uploadClickConversions request for one delivery."""
    credentials = postback.credentials
    gclid = facts.click_params.get(CLICK_PARAM)
    if not gclid:
        raise PayloadError("the click has no gclid parameter")
    value = preset_value(postback, facts)
    customer_id = customer_digits(credentials["customer_id"])
    moment = facts.conversion_time
    moment = moment.astimezone(UTC) if moment.tzinfo is not None else moment
    conversion: dict[str, Any] = {
        "gclid": gclid,
        "conversionAction": (
            f"customers/{customer_id}/conversionActions/{credentials['conversion_action_id']}"
        ),
        "conversionDateTime": moment.strftime("%Y-%m-%d %H:%M:%S+00:00"),
        "orderId": str(facts.delivery_id),
    }
    if value is not None:
        conversion["conversionValue"] = json_number(value)
        conversion["currencyCode"] = facts.currency
    headers = {
        "Authorization": f"Bearer {credentials['access_token']}",
        "developer-token": credentials["developer_token"],
    }
    if credentials.get("login_customer_id"):
        headers["login-customer-id"] = customer_digits(credentials["login_customer_id"])
    url = f"{urls.google_ads.rstrip('/')}/customers/{customer_id}:uploadClickConversions"
    payload = {"conversions": [conversion], "partialFailure": True}
    return json_request(url, payload, facts.delivery_id, headers)


def _digits(value: str, length: int | None = None) -> bool:
    return value.isascii() and value.isdigit() and (length is None or len(value) == length)
