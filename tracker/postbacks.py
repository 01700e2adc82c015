"""Turning an inbound postback into a conversion, for the web app and the sink alike.

The web app processes postbacks as they arrive; the sink processes again those
that arrived before their click (orphans) once the click is stored.
"""

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

import asyncpg
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
)

from tracker.domain.auth import canonical_signature, check_postback_auth
from tracker.domain.dialects import DialectConflict, canonical_params
from tracker.domain.fx import convert
from tracker.domain.lifecycle import CHARGEBACK, UnknownStatus, normalize_status
from tracker.domain.money import PAYOUT_DECIMALS, parse_currency, parse_money, payout_refusal
from tracker.domain.validation import field_errors
from tracker.logs import Throttled
from tracker.store import signatures
from tracker.store.clicks import ClickReader
from tracker.store.config import ConfigCache
from tracker.store.conversions import (
    ConversionPostback,
    ConversionWriter,
    ParentNotFound,
    SignatureUsed,
)
from tracker.store.postback_log import PIXEL, UPLOAD, Inbound, mark_rematched, unmatched_for

log = logging.getLogger("tracker.postback")

UNMATCHED, REJECTED_AUTH, INVALID = "unmatched", "rejected-auth", "invalid"
QUEUED, FAILED = "queued", "failed"
PIXEL_NOT_ALLOWED = "pixel not allowed for this network"
PIXEL_CANNOT_REFUND = "a pixel cannot take money back (negative payout or parent_txid)"
PIXEL_STATUSES = frozenset({"lead", "pending", "approved"})
PIXEL_STATUS = "a pixel reports only lead, pending or approved conversions"


# Deletes the replay key only if it still holds this receipt id.
def _payout(value: Any) -> Any:
    return parse_money(value, PAYOUT_DECIMALS) if isinstance(value, str) else value


class PostbackFields(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    clickid: str = Field(min_length=1, max_length=64)
    payout: Annotated[
        Decimal | None,
        BeforeValidator(_payout),
        WithJsonSchema(
            {"anyOf": [{"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?$"}, {"type": "null"}]}
        ),
    ] = None
    txid: str = Field(default="", max_length=128)
    parent_txid: str | None = Field(default=None, max_length=128)
    status: str | None = Field(default=None, max_length=64)
    currency: Annotated[str | None, BeforeValidator(parse_currency)] = None
    event: str | None = Field(default=None, max_length=64)
    token: str | None = Field(default=None, max_length=256)


@dataclass(frozen=True, slots=True)
class Outcome:
    result: str  # created | updated | duplicate | unmatched | rejected-auth | invalid
    http_status: int
    conversion_id: int | None = None
    reason: str | None = None
    details: list[dict[str, str]] | None = None
    network_id: int | None = None
    click_id: str | None = None
    # True when the log row was written with the conversion, in its transaction.
    logged: bool = False
    # The conversion's status when it was written (created or updated).
    status: str | None = None

    def body(self) -> dict[str, Any]:
        if self.conversion_id is not None and self.http_status == 200:
            return {"result": self.result, "conversion_id": self.conversion_id}
        body: dict[str, Any] = {"error": self.reason or self.result, "result": self.result}
        if self.details is not None:
            body["details"] = self.details
        return body


class PostbackProcessor:
    def __init__(
        self,
        config: ConfigCache,
        clicks: ClickReader,
        conversions: ConversionWriter,
        pool: asyncpg.Pool,
    ) -> None:
        self._config = config
        self._clicks = clicks
        self._conversions = conversions
        self._pool = pool
        # Every refusal is in the postback log; the process log only needs to show a trend.
        self._refusals = Throttled(log)

    async def process(self, inbound: Inbound) -> Outcome:
        """Match, authenticate, validate and record one postback.

        A conversion and its log row are written in one transaction (the outcome
        says `logged`); any other outcome is for the caller to log. Errors from
        storage propagate: the caller queues the postback or answers 503.
        """
        try:
            fields = PostbackFields.model_validate(canonical_params(inbound.params))
        except DialectConflict as exc:
            details = [{"field": name, "message": str(exc)} for name in exc.names]
            return Outcome(INVALID, 400, reason=str(exc), details=details)
        except ValidationError as exc:
            return Outcome(
                INVALID,
                400,
                reason="invalid postback",
                details=field_errors(exc),
                click_id=inbound.params.get("clickid"),
            )

        click = await self._clicks.fetch(fields.clickid)
        if click is None:
            details = [{"field": "clickid", "message": "no such click"}]
            return Outcome(
                UNMATCHED, 404, reason="unknown click id", details=details, click_id=fields.clickid
            )

        snapshot = self._config.snapshot
        if click["offer_id"] not in snapshot.offers:
            # Made on another process moments ago: this one has not refreshed yet.
            await self._config.reload()
            snapshot = self._config.snapshot
        offer = snapshot.offers.get(click["offer_id"])
        network = snapshot.networks.get(offer.affiliate_network_id) if offer else None
        if offer is None or network is None:
            reason = "forbidden: the click's offer or network is unknown"
            return Outcome(REJECTED_AUTH, 403, reason=reason, click_id=fields.clickid)
        network_id = network.id
        found: dict[str, Any] = {"network_id": network_id, "click_id": fields.clickid}
        if network.archived:
            reason = "forbidden: the affiliate network is archived"
            return Outcome(REJECTED_AUTH, 403, reason=reason, **found)
        pixel = inbound.source == PIXEL
        # An upload was authenticated by the API key: it is the buyer's own correction.
        networks_auth = inbound.source not in (PIXEL, UPLOAD)
        if pixel:
            # The pixel carries no secret: the network's switch stands in for its auth.
            if not network.allow_pixel:
                return Outcome(REJECTED_AUTH, 403, reason=PIXEL_NOT_ALLOWED, **found)
        elif networks_auth:
            refusal = check_postback_auth(
                network,
                fields.token or inbound.path_token,
                inbound.client_ip,
                inbound.raw,
                inbound.signature,
                inbound.signature_ts,
                inbound.received_at.timestamp(),
            )
            if refusal is not None:
                self._refusals.warning("postback for click %s refused: %s", fields.clickid, refusal)
                return Outcome(REJECTED_AUTH, 403, reason=f"forbidden: {refusal}", **found)

        try:
            status = normalize_status(fields.status, network.status_map)
        except UnknownStatus as exc:
            details = [{"field": "status", "message": str(exc)}]
            return Outcome(INVALID, 400, reason=str(exc), details=details, **found)

        click_time = datetime.fromtimestamp(click["created_ms"] / 1000, tz=UTC)
        campaign = snapshot.campaigns_by_id.get(click["campaign_id"])
        if campaign is not None:
            window = timedelta(days=campaign.attribution_window_days)
            if inbound.received_at - click_time > window:
                reason = "click is older than the campaign's attribution window"
                return Outcome(INVALID, 404, reason=reason, **found)

        if fields.payout is not None:
            original = fields.payout
        else:
            original = offer.payout if offer.payout is not None else Decimal(0)
        if pixel and status not in PIXEL_STATUSES:
            # A new conversion born rejected or charged back would be reported as such to
            # the traffic source: only an authenticated postback may say so.
            details = [{"field": "status", "message": PIXEL_STATUS}]
            return Outcome(INVALID, 400, reason=PIXEL_STATUS, details=details, **found)
        if pixel and (fields.parent_txid is not None or original < 0):
            # Refunds come only from an authenticated postback (or the API).
            details = [{"field": "payout", "message": PIXEL_CANNOT_REFUND}]
            return Outcome(INVALID, 400, reason=PIXEL_CANNOT_REFUND, details=details, **found)
        if fields.parent_txid is not None and original >= 0:
            details = [
                {"field": "payout", "message": "a refund by parent_txid needs a negative payout"}
            ]
            return Outcome(INVALID, 400, reason="invalid postback", details=details, **found)
        original_currency = fields.currency or offer.currency
        report_currency = campaign.report_currency if campaign else original_currency
        converted = convert(
            original,
            original_currency,
            report_currency,
            inbound.received_at.date(),
            snapshot.rates,
        )
        refusal = payout_refusal(
            fields.payout,
            fields.parent_txid is not None or status == CHARGEBACK,
            original,
            converted,
        )
        if refusal is not None:
            details = [{"field": "payout", "message": refusal}]
            return Outcome(INVALID, 400, reason="invalid postback", details=details, **found)

        policy = network.duplicate_policy
        if policy == "ignore":
            dedupe_key = ""
        elif policy == "accept":
            # From the receipt: applying the same received postback again creates nothing.
            dedupe_key = "accept:" + inbound.receipt_id
        else:
            dedupe_key = fields.txid
        # Spent with the write, in its transaction, so that only a postback that passed
        # every other check uses up its signature, and one not written gives it back.
        claim = None
        if network.signing_secret and networks_auth:
            claim = (canonical_signature(inbound.signature) or "", inbound.receipt_id)
        try:
            result, conversion_id = await self._conversions.record(
                ConversionPostback(
                    click=click,
                    network_id=network_id,
                    dedupe_key=dedupe_key,
                    txid=fields.txid,
                    parent_txid=fields.parent_txid,
                    status=status,
                    payout=converted,
                    currency=report_currency,
                    original_payout=original,
                    original_currency=original_currency,
                    payout_given=fields.payout is not None,
                    event=fields.event,
                    params={k: v for k, v in inbound.params.items() if k != "token"},
                    inbound=inbound,
                    source=inbound.source,
                    signature_claim=claim,
                )
            )
        except ParentNotFound as exc:
            return Outcome(INVALID, 404, reason=str(exc), **found)
        except SignatureUsed:
            self._refusals.warning(
                "postback for click %s refused: signature already used", fields.clickid
            )
            return Outcome(REJECTED_AUTH, 403, reason="forbidden: signature already used", **found)
        return Outcome(
            result, 200, conversion_id=conversion_id, logged=True, status=status, **found
        )

    async def release_signature(self, inbound: Inbound) -> None:
        """Give the signature back after a failed write, so the network's retry is no replay."""
        signature = canonical_signature(inbound.signature)
        if signature:
            await signatures.release(self._pool, signature, inbound.receipt_id)


class OrphanMatcher:
    """Gives postbacks that arrived before their click a second chance once it is stored."""

    def __init__(self, pool: Any, processor: PostbackProcessor) -> None:
        self._pool = pool
        self._processor = processor

    async def rematch(self, click_ids: list[str], since: datetime | None = None) -> None:
        """Process again the unmatched postbacks for `click_ids` received since `since`
        (default: from a day before the oldest of the clicks)."""
        if not click_ids:
            return
        for log_id, inbound in await unmatched_for(self._pool, click_ids, since):
            try:
                # Replay protection holds here too: of two copies of one signed postback
                # (two receipts), only the first to be re-matched spends the signature.
                outcome = await self._processor.process(inbound)
                if outcome.result != UNMATCHED:
                    await mark_rematched(self._pool, log_id, outcome, inbound.received_at)
                    log.info("orphan postback %s matched: %s", log_id, outcome.result)
            except Exception:
                log.exception("re-matching orphan postback %s failed", log_id)
