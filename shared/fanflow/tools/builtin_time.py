"""Dify's built-in `time` provider: current time, timezone conversion, timestamps, weekday.

Tool names, parameters, defaults and the text each tool answers with are Dify's; a bad
timezone or date is answered as text (as Dify's tools do), not a node failure.
"""

from __future__ import annotations

import calendar
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fanflow.tools.base import Tool, ToolCall, ToolResult, param

__all__ = ["TIME_TOOLS"]

_DEFAULT_FORMAT = "%Y-%m-%d %H:%M:%S"


def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


async def _current_time(params: dict[str, object], call: ToolCall) -> ToolResult:
    name = str(params.get("timezone") or "UTC")
    fmt = str(params.get("format") or "%Y-%m-%d %H:%M:%S %Z")
    if name == "UTC":
        return ToolResult().add_text(datetime.now(UTC).strftime(fmt))
    zone = _zone(name)
    if zone is None:
        return ToolResult().add_text(f"Invalid timezone: {name}")
    return ToolResult().add_text(datetime.now(zone).strftime(fmt))


async def _timezone_conversion(params: dict[str, object], call: ToolCall) -> ToolResult:
    source, target = _zone(str(params["current_timezone"])), _zone(str(params["target_timezone"]))
    if source is None or target is None:
        bad = params["current_timezone"] if source is None else params["target_timezone"]
        return ToolResult().add_text(f"Invalid timezone: {bad}")
    try:
        local = datetime.strptime(str(params["current_time"]), _DEFAULT_FORMAT)
    except ValueError as exc:
        return ToolResult().add_text(f"Invalid time: {exc}")
    converted = local.replace(tzinfo=source).astimezone(target)
    return ToolResult().add_text(converted.strftime(_DEFAULT_FORMAT))


async def _timestamp_to_localtime(params: dict[str, object], call: ToolCall) -> ToolResult:
    zone = _zone(str(params.get("timezone") or "Asia/Shanghai"))
    if zone is None:
        return ToolResult().add_text(f"Invalid timezone: {params.get('timezone')}")
    try:
        when = datetime.fromtimestamp(float(str(params["timestamp"])), zone)
    except (ValueError, OverflowError, OSError) as exc:
        return ToolResult().add_text(f"Invalid timestamp: {exc}")
    return ToolResult().add_text(when.strftime(str(params.get("format") or _DEFAULT_FORMAT)))


async def _localtime_to_timestamp(params: dict[str, object], call: ToolCall) -> ToolResult:
    zone = _zone(str(params.get("timezone") or "Asia/Shanghai"))
    if zone is None:
        return ToolResult().add_text(f"Invalid timezone: {params.get('timezone')}")
    try:
        local = datetime.strptime(str(params["localtime"]), _DEFAULT_FORMAT)
    except ValueError as exc:
        return ToolResult().add_text(f"Invalid localtime: {exc}")
    return ToolResult().add_text(str(int(local.replace(tzinfo=zone).timestamp())))


async def _weekday(params: dict[str, object], call: ToolCall) -> ToolResult:
    try:
        year, month, day = (int(str(params[k])) for k in ("year", "month", "day"))
        when = datetime(year, month, day)
    except (ValueError, KeyError):
        return ToolResult().add_text("Invalid date.")
    name = calendar.day_name[when.weekday()]
    return ToolResult().add_text(f"{calendar.month_name[month]} {day}, {year} is {name}.")


TIME_TOOLS = (
    Tool(
        "current_time",
        "A tool for getting the current time.",
        (param("format", default="%Y-%m-%d %H:%M:%S"), param("timezone", default="UTC")),
        _current_time,
    ),
    Tool(
        "timezone_conversion",
        "Convert a time (%Y-%m-%d %H:%M:%S) from one timezone to another.",
        (
            param("current_time", required=True),
            param("current_timezone", required=True),
            param("target_timezone", required=True),
        ),
        _timezone_conversion,
    ),
    Tool(
        "timestamp_to_localtime",
        "A Unix timestamp as local time in a timezone.",
        (
            param("timestamp", "number", required=True),
            param("timezone", default="Asia/Shanghai"),
            param("format", default=_DEFAULT_FORMAT),
        ),
        _timestamp_to_localtime,
    ),
    Tool(
        "localtime_to_timestamp",
        "A local time (%Y-%m-%d %H:%M:%S) in a timezone as a Unix timestamp.",
        (param("localtime", required=True), param("timezone", default="Asia/Shanghai")),
        _localtime_to_timestamp,
    ),
    Tool(
        "weekday",
        "The weekday of a date.",
        (
            param("year", "number", required=True),
            param("month", "number", required=True),
            param("day", "number", required=True),
        ),
        _weekday,
    ),
)
