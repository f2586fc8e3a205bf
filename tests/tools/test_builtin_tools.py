"""Dify's built-in tools without network: time, json_process, regex — through the tool node."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from tests.tools.conftest import run_tool, tool_task


async def test_current_time_in_a_timezone_with_a_format() -> None:
    before = datetime.now(ZoneInfo("Asia/Tokyo"))
    result = await run_tool(
        tool_task(
            "time",
            "current_time",
            configurations={
                "format": {"type": "mixed", "value": "%Y-%m-%d %H:%M %z"},
                "timezone": {"type": "constant", "value": "Asia/Tokyo"},
            },
        )
    )
    assert result.status == "succeeded", result.error
    after = datetime.now(ZoneInfo("Asia/Tokyo"))
    assert result.outputs["text"] in {t.strftime("%Y-%m-%d %H:%M %z") for t in (before, after)}
    assert result.outputs["text"].endswith("+0900")
    assert result.outputs["files"] == []
    assert result.outputs["json"] == [{"data": []}]  # Dify's shape when no JSON message


async def test_current_time_defaults_and_plugin_ids() -> None:
    """Legacy plain configurations, and Dify 1.x's `langgenius/time/time` id."""
    result = await run_tool(
        tool_task("langgenius/time/time", "current_time", configurations={"timezone": "UTC"})
    )
    assert result.status == "succeeded", result.error
    shown = datetime.strptime(result.outputs["text"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    assert abs(datetime.now(UTC) - shown) < timedelta(seconds=5)


async def test_a_bad_timezone_is_the_tools_answer() -> None:
    result = await run_tool(tool_task("time", "current_time", {"timezone": "Mars/Olympus"}))
    assert result.status == "succeeded"
    assert result.outputs["text"] == "Invalid timezone: Mars/Olympus"


async def test_timezone_conversion_and_timestamps() -> None:
    converted = await run_tool(
        tool_task(
            "time",
            "timezone_conversion",
            {
                "current_time": "2024-08-11 12:00:00",
                "current_timezone": "UTC",
                "target_timezone": "Asia/Shanghai",
            },
        )
    )
    assert converted.outputs["text"] == "2024-08-11 20:00:00"
    local = await run_tool(
        tool_task("time", "timestamp_to_localtime", {"timestamp": "0", "timezone": "UTC"})
    )
    assert local.outputs["text"] == "1970-01-01 00:00:00"
    stamp = await run_tool(
        tool_task(
            "time",
            "localtime_to_timestamp",
            {"localtime": "2024-01-01 08:00:00", "timezone": "Asia/Shanghai"},
        )
    )
    assert stamp.outputs["text"] == "1704067200"
    weekday = await run_tool(tool_task("time", "weekday", {"year": 2024, "month": 8, "day": 11}))
    assert weekday.outputs["text"] == "August 11, 2024 is Sunday."


async def test_a_missing_required_parameter_fails_naming_it() -> None:
    result = await run_tool(tool_task("time", "timezone_conversion", {"current_time": "x"}))
    assert result.status == "failed"
    assert result.error_type == "ToolParameterError"
    assert result.error == (
        "tool (My Tool): tool 'timezone_conversion' needs parameter 'current_timezone'"
    )


DOC = {"book": [{"title": "A", "price": 8}, {"title": "Bé", "price": 12}], "store": "x"}


@pytest.mark.parametrize(
    ("json_filter", "expected"),
    [
        ("$.store", "x"),
        ("$.book[*].price", "[8, 12]"),
        ("$.book[1]", '{"title": "B\\u00e9", "price": 12}'),
        ("$.book[?(@.price > 10)].title", "Bé"),
    ],
)
async def test_json_parse_selects_with_jsonpath(json_filter: str, expected: str) -> None:
    result = await run_tool(
        tool_task(
            "json_process",
            "parse",
            {
                "content": {"type": "variable", "value": ["http", "body"]},
                "json_filter": json_filter,
            },
            variables={"http.body": json.dumps(DOC)},
        )
    )
    assert result.status == "succeeded", result.error
    assert result.outputs["text"] == expected


async def test_json_parse_of_text_that_is_not_json_is_the_tools_answer() -> None:
    result = await run_tool(
        tool_task("json_process", "parse", {"content": "{nope", "json_filter": "$.a"})
    )
    assert result.status == "succeeded"
    assert result.outputs["text"].startswith("Failed to extract JSON content")


async def test_json_insert_replace_delete() -> None:
    content = json.dumps(DOC)
    inserted = await run_tool(
        tool_task(
            "json_process",
            "insert",
            {
                "content": content,
                "query": "$.book",
                "new_value": '{"title": "C", "price": 1}',
                "value_decode": True,
                "index": 0,
                "ensure_ascii": False,
            },
        )
    )
    assert json.loads(inserted.outputs["text"])["book"][0] == {"title": "C", "price": 1}
    created = await run_tool(
        tool_task(
            "json_process",
            "insert",
            {"content": content, "query": "$.owner.name", "new_value": "ann", "create_path": True},
        )
    )
    assert json.loads(created.outputs["text"])["owner"] == {"name": "ann"}
    replaced = await run_tool(
        tool_task(
            "json_process",
            "replace",
            {
                "content": content,
                "query": "$.book[*].title",
                "replace_model": "pattern",
                "replace_pattern": "A",
                "replace_value": "Z",
            },
        )
    )
    assert [b["title"] for b in json.loads(replaced.outputs["text"])["book"]] == ["Z", "Bé"]
    valued = await run_tool(
        tool_task(
            "json_process",
            "replace",
            {
                "content": content,
                "query": "$.store",
                "replace_model": "value",
                "replace_value": "y",
            },
        )
    )
    assert json.loads(valued.outputs["text"])["store"] == "y"
    deleted = await run_tool(
        tool_task("json_process", "delete", {"content": content, "query": "$.book[0]"})
    )
    assert json.loads(deleted.outputs["text"])["book"] == [{"title": "Bé", "price": 12}]


async def test_a_select_parameter_outside_its_options_is_refused() -> None:
    result = await run_tool(
        tool_task(
            "json_process",
            "replace",
            {"content": "{}", "query": "$.a", "replace_value": "1", "replace_model": "nope"},
        )
    )
    assert result.status == "failed"
    assert "replace_model' must be one of pattern, key, value, got 'nope'" in (result.error or "")


async def test_regex_extract() -> None:
    result = await run_tool(
        tool_task(
            "regex",
            "regex_extract",
            {"content": {"type": "mixed", "value": "ids: {{#start.text#}}"}, "expression": r"\d+"},
            variables={"start.text": "7, 42"},
        )
    )
    assert result.outputs["text"] == "['7', '42']"


async def test_an_unknown_tool_fails_naming_provider_and_tool() -> None:
    result = await run_tool(tool_task("time", "moon_phase"))
    assert result.status == "failed"
    assert result.error_type == "NotSupportedError"
    assert "built-in tool provider 'time' has no tool 'moon_phase'" in (result.error or "")
