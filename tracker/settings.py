"""Process configuration, read from `TRACKER_*` environment variables."""

import zoneinfo
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Large hosting and cloud networks: clicks from them are not people browsing.
DATA_CENTER_ASNS = (
    "16509", "14618", "8075", "396982", "14061", "16276", "24940", "63949", "20473",
    "45102", "37963", "31898", "9009", "51167", "12876",
    "AMAZON-02", "AMAZON-AES", "MICROSOFT-CORP-MSN-AS-BLOCK", "GOOGLE-CLOUD-PLATFORM",
    "DIGITALOCEAN-ASN", "OVH SAS", "Hetzner Online GmbH", "Akamai Connected Cloud",
    "AS-CHOOPA", "Alibaba US Technology Co., Ltd.", "Hangzhou Alibaba Advertising Co.,Ltd.",
    "ORACLE-BMC-31898", "M247 Europe SRL", "Contabo GmbH", "Scaleway S.a.s.",
)  # fmt: skip


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRACKER_", extra="ignore")

    http_host: str = "127.0.0.1"
    http_port: int = 8080
    database_url: str = "postgresql://tracker@127.0.0.1:5432/tracker"
    redis_url: str = "redis://127.0.0.1:6379/0"
    api_key: SecretStr | None = None
    public_url: str = ""
    # Dashboard (/ui) sign-in: this password or the API key; sessions end after this
    # many idle seconds.
    dashboard_password: SecretStr | None = None
    dashboard_session_idle_seconds: int = Field(default=8 * 3600, ge=60)

    db_pool_min: int = 2
    db_pool_max: int = 10
    # Seconds a Postgres query or connection attempt may take before Postgres counts as
    # unavailable (postbacks are then queued in Redis).
    pg_timeout: float = Field(default=5.0, gt=0)
    # Requests longer than this (request line or header) are refused with a JSON 414.
    max_request_line: int = 16384
    # Bounds on the free-form parameters kept with a click.
    click_max_params: int = 30
    click_max_param_length: int = 512
    # Proxies (addresses or CIDRs) whose X-Forwarded-For is believed for postback allowlists.
    trusted_proxies: list[str] = []
    # One JSON line per request on stderr (logger `tracker.access`); costs click throughput.
    access_log: bool = False
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    # Prometheus: GET /metrics on the web port needs the API key. A process may also serve
    # its metrics without the key on a port of its own, bound to metrics_host: web worker i
    # of `serve --workers N` on metrics_port + i, the sink on sink_metrics_port (0: none).
    metrics_enabled: bool = True
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=0, ge=0, le=65535)
    sink_metrics_port: int = Field(default=0, ge=0, le=65535)
    # Failed admin API authentications allowed per client address and window; then 429.
    admin_auth_max_failures: int = Field(default=20, ge=1)
    admin_auth_window_seconds: int = Field(default=60, ge=1)
    # Seconds a connection may take to send a complete request head (from connecting,
    # or from the previous response); also how long an idle keep-alive connection lasts.
    header_read_timeout: float = Field(default=10.0, gt=0)
    # Seconds a request body may take to arrive once its head is read; then a 408.
    body_read_timeout: float = Field(default=10.0, gt=0)
    # Seconds a stopping web process waits for in-flight requests before closing.
    shutdown_timeout: float = 10.0
    config_refresh_seconds: float = Field(default=0.5, gt=0)
    # GET /readyz: seconds each check may take, and how far behind the sink may fall
    # (age of the oldest click or queued postback not yet stored; 0: not checked).
    ready_timeout: float = Field(default=2.0, gt=0)
    ready_max_sink_lag_seconds: float = Field(default=120.0, ge=0)

    # Seconds any Redis command may take, and connecting to Redis, before it counts as failed.
    redis_timeout: float = Field(default=0.5, gt=0)
    redis_connect_timeout: float = Field(default=1.0, gt=0)
    # Hours a click record stays in Redis (never longer than its campaign's attribution
    # window); an older click is matched from Postgres. Bounds Redis RAM to the hot window.
    redis_click_ttl_hours: float = Field(default=72.0, gt=0)
    # Redis Cluster: REDIS_URL names one node (redis://host:port) and the rest are found.
    redis_cluster: bool = False
    # Shards (hash tags) new clicks are spread over: each has its own stream, and a
    # click's record lives beside its stream entry. Any click id names its shard.
    redis_shards: int = Field(default=8, ge=1, le=512)
    # Replicas that must hold each click batch before its visitors are redirected
    # (WAIT; 0: none), and how long to wait for them; a batch they do not confirm in
    # time is also spooled locally, so a master failing over cannot lose it.
    redis_wait_replicas: int = Field(default=0, ge=0)
    redis_wait_timeout_ms: int = Field(default=100, ge=1)
    # Seconds a click waits for Redis before it is written to the local spool instead.
    click_write_timeout: float = Field(default=0.25, gt=0)
    # Where each web process spools clicks while Redis is unavailable (one file per process).
    spool_dir: str = "var/spool"
    # How often a process in degraded mode checks whether Redis answers again.
    spool_probe_seconds: float = Field(default=0.5, gt=0)
    # Items a group-commit queue holds before callers are refused at once.
    batch_max_pending: int = Field(default=20000, ge=1)

    # Visitor facts on the click path. A MaxMind-format City or Country database (.mmdb);
    # empty: the embedded default data (country and network name, no region or city).
    geoip_db: str = ""
    # A MaxMind-format ASN database (.mmdb) for the network number and organisation.
    geoip_asn_db: str = ""
    # A CDN header with the visitor's country, believed from trusted proxies only
    # (CF-IPCountry always is).
    country_header: str = ""
    # Addresses or CIDRs whose clicks are bots.
    bot_ip_ranges: list[str] = []
    # Data-center networks whose clicks are bots: AS numbers, or organisation names as the
    # GeoIP data spells them (compared without regard to case).
    bot_asns: list[str] = Field(default_factory=lambda: list(DATA_CENTER_ASNS))
    # Distinct User-Agents, and addresses, whose facts each process keeps in memory.
    fact_cache_size: int = Field(default=100_000, ge=0)

    sink_batch_size: int = 2000
    sink_block_ms: int = 500
    sink_claim_idle_ms: int = 30000
    # After a batch that was not full, the sink waits this long before reading again, so
    # that under load it writes fewer, bigger batches (each costs a commit and rollup upserts).
    sink_linger_ms: int = Field(default=200, ge=0, le=5000)

    # Unauthenticated failed postbacks (unmatched, invalid, refused) one address may send a
    # minute before it gets 429s; a network's authenticated postbacks are never counted.
    postback_failures_per_minute: int = Field(default=60, ge=1)
    # A failed postback's log row (raw text and parameters) is cut to about this size.
    postback_log_max_bytes: int = Field(default=4096, ge=1024)
    # Days postback log rows are kept: all rows (whole daily partitions dropped once
    # older), and refused ones (invalid, rejected-auth; deleted in batches from live
    # partitions). Unmatched rows follow the first, since they wait for their click.
    postback_log_retention_days: int = Field(default=90, ge=1)
    postback_log_failed_retention_days: int = Field(default=14, ge=1)
    # How often the sink deletes expired refused postback log rows, and rows per delete.
    postback_log_cleanup_seconds: float = Field(default=300.0, gt=0)
    postback_log_cleanup_batch: int = Field(default=1000, ge=1)
    # Days raw clicks are kept (0: for ever); whole daily partitions are dropped once
    # older. Never less than the longest attribution window plus a day (raised, and
    # logged, when shorter). Reports on rollups and conversions are not affected.
    click_retention_days: int = Field(default=90, ge=0)
    # Days finished (delivered or dead) deliveries and their attempts are kept (0: for
    # ever); pending ones stay until they finish.
    delivery_retention_days: int = Field(default=30, ge=0)
    # How often the sink creates partitions ahead and applies retention (also at start);
    # `tracker maintain` does the same once.
    maintain_seconds: float = Field(default=3600.0, gt=0)
    # Daily partitions (clicks, postback log) and monthly ones (conversions) made ahead.
    partition_days_ahead: int = Field(default=7, ge=1)
    partition_months_ahead: int = Field(default=2, ge=1)
    # How often the sink re-matches unmatched postbacks whose click has since been stored.
    orphan_sweep_seconds: float = Field(default=60.0, gt=0)

    # Reports: the time zone of `from`, `to` and time buckets when a report names none,
    # and the longest range one report may cover.
    report_timezone: str = "UTC"
    report_max_days: int = Field(default=366, ge=1)
    # Seconds one report may take; a longer one gets a 504 asking for a narrower report.
    report_timeout: float = Field(default=30.0, gt=0)
    # Zones whose local days are rolled up (comma-separated IANA names; empty: UTC and
    # the report zone). `tracker migrate` applies a change, backfilling an added zone.
    rollup_zones: str = ""
    # A streaming replica of database_url for reports (GET /api/reports, the dashboard's
    # tables and charts); empty: the primary. Everything else uses the primary. A report
    # says how far behind the replica is; the dashboard shows it past this many seconds.
    reports_database_url: str = ""
    reports_lag_notice_seconds: float = Field(default=5.0, ge=0)

    # Conversions sent back to traffic sources (the outbox sender in `tracker sink` or
    # `tracker sender`). The first retry waits about this long, each next one twice as long.
    outbound_retry_base_seconds: float = Field(default=5.0, gt=0)
    # Attempts per delivery, and its age, before it is given up as dead.
    outbound_max_attempts: int = Field(default=10, ge=1)
    outbound_max_age_hours: float = Field(default=72.0, gt=0)
    # Seconds to connect, and for a whole attempt (connect, send, answer).
    outbound_connect_timeout: float = Field(default=5.0, gt=0)
    outbound_timeout: float = Field(default=15.0, gt=0)
    # Attempts in flight per sender process, and per destination host.
    outbound_concurrency: int = Field(default=50, ge=1)
    outbound_per_host: int = Field(default=10, ge=1)
    # Deliveries to loopback, private, link-local and other non-public addresses are
    # refused unless this is true (checked on the address the host name resolves to).
    outbound_allow_private: bool = False
    # Ad platforms' API base URLs (point them at a proxy or a test server).
    meta_api_url: str = "https://graph.facebook.com/v21.0"
    tiktok_api_url: str = "https://business-api.tiktok.com/open_api/v1.3"
    google_ads_api_url: str = "https://googleads.googleapis.com/v18"
    # Where Google Ads access tokens are refreshed (a source with a refresh token).
    google_oauth_url: str = "https://oauth2.googleapis.com/token"

    @field_validator("log_level", mode="before")
    @classmethod
    def upper_case_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    def secrets(self) -> list[str]:
        """Configured credentials, masked wherever a log line would show them."""
        keys = (self.api_key, self.dashboard_password)
        return [key.get_secret_value() for key in keys if key is not None]

    @field_validator("rollup_zones")
    @classmethod
    def known_rollup_zones(cls, value: str) -> str:
        for name in filter(None, (part.strip() for part in value.split(","))):
            cls.known_time_zone(name)
        return value

    def rollup_zone_names(self) -> list[str]:
        """The zones whose local days are rolled up, UTC first."""
        named = [part.strip() for part in self.rollup_zones.split(",") if part.strip()]
        return sorted(set(named or ["UTC", self.report_timezone]), key=lambda z: (z != "UTC", z))

    @field_validator("report_timezone")
    @classmethod
    def known_time_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone such as Europe/Berlin") from None
        return value

    @model_validator(mode="after")
    def click_waits_for_its_replicas(self) -> "Settings":
        """A click must be able to wait for its batch's WAIT, and a batch ahead of it,
        before it gives up on Redis; else every click would be spooled as well."""
        if self.redis_wait_replicas:
            needed = 2 * self.redis_wait_timeout_ms / 1000 + 0.05
            if self.click_write_timeout < needed - 1e-9:
                raise ValueError(
                    f"TRACKER_CLICK_WRITE_TIMEOUT ({self.click_write_timeout} s) must be at"
                    f" least twice TRACKER_REDIS_WAIT_TIMEOUT_MS plus 50 ms ({needed:g} s)"
                    " when TRACKER_REDIS_WAIT_REPLICAS is set"
                )
        return self

    def base_url(self) -> str:
        """The public base URL used in URLs we print and return."""
        if self.public_url:
            return self.public_url.rstrip("/")
        return f"http://{self.http_host}:{self.http_port}"
