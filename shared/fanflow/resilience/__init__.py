"""Guarding external calls: circuit breakers, rate limits, short retries, the SSRF guard."""

from fanflow.resilience.breaker import BreakerConfig, CircuitBreaker
from fanflow.resilience.ratelimit import UpstreamLimits, load_limits
from fanflow.resilience.upstreams import RetryPolicy, UpstreamFailure, Upstreams, parse_retry_after

__all__ = [
    "BreakerConfig",
    "CircuitBreaker",
    "RetryPolicy",
    "UpstreamFailure",
    "UpstreamLimits",
    "Upstreams",
    "load_limits",
    "parse_retry_after",
]
