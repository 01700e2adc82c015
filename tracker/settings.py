"""Process configuration, read from `TRACKER_*` environment variables."""

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRACKER_", extra="ignore")

    http_host: str = "127.0.0.1"
    http_port: int = 8080
    database_url: str = "postgresql://tracker@127.0.0.1:5432/tracker"
    redis_url: str = "redis://127.0.0.1:6379/0"
    api_key: SecretStr | None = None
    public_url: str = ""

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
    access_log: bool = False
    # Seconds a stopping web process waits for in-flight requests before closing.
    shutdown_timeout: float = 10.0
    config_refresh_seconds: float = Field(default=1.0, gt=0)

    sink_batch_size: int = 2000
    sink_block_ms: int = 500
    sink_claim_idle_ms: int = 30000

    def base_url(self) -> str:
        """The public base URL used in URLs we print and return."""
        if self.public_url:
            return self.public_url.rstrip("/")
        return f"http://{self.http_host}:{self.http_port}"
