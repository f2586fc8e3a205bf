"""Fleet-wide state from the settings: with `FANFLOW_REDIS_URL`, one Redis client per
process for the limits (`redis_limits`) and the shared breakers (`redis_breaker`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fanflow.resilience.breaker import BreakerConfig
from fanflow.resilience.redis_breaker import SharedBreakers
from fanflow.resilience.redis_client import FleetRedis
from fanflow.resilience.redis_limits import FleetLimiter

if TYPE_CHECKING:
    from fanflow.settings import Settings


def fleet_from_settings(
    settings: Settings, breaker: BreakerConfig
) -> tuple[FleetLimiter | None, SharedBreakers | None]:
    """(limiter, breakers) sharing one client; (None, None) without a Redis URL."""
    if not settings.redis_url:
        return None, None
    redis = FleetRedis(
        settings.redis_url,
        prefix=settings.redis_prefix or settings.namespace,
        retry_s=settings.redis_retry_s,
        timeout_s=settings.redis_timeout_s,
    )
    return (
        FleetLimiter(redis, lease_ttl_s=settings.redis_lease_ttl_s),
        SharedBreakers(redis, breaker, sync_s=settings.redis_breaker_sync_s),
    )
