"""The `http-request` executor against a real HTTP server on 127.0.0.1, and its SSRF guard.

Every connection the event loop opens is watched: anything but loopback is refused by the
test itself, so no test (and no bug) can send traffic beyond this machine.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from prometheus_client import REGISTRY

from fanflow.executors import ExecutionContext, execute_task
from fanflow.executors import http_request as http_module
from fanflow.messages import NodeTask, TaskResult
from fanflow.resilience import ssrf
from fanflow.resilience.upstreams import Upstreams

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(
        self, status: int, body: bytes, content_type: str = "text/plain", **headers: str
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if headers.pop("length", "yes") == "yes":
            self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        parts = urlsplit(self.path)
        query = dict(parse_qsl(parts.query))
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.hits.append((self.command, parts.path))
        path = parts.path
        if path == "/echo":
            echo = {
                "method": self.command,
                "path": parts.path,
                "query": parse_qsl(parts.query, keep_blank_values=True),
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body.decode("utf-8", "replace"),
            }
            self._reply(200, json.dumps(echo).encode(), "application/json")
        elif path.startswith("/status/"):
            extra = {"Retry_After": query["retry_after"]} if "retry_after" in query else {}
            code = int(path.rsplit("/", 1)[1])
            self._reply(code, f"status {code}".encode(), **extra)
        elif path == "/redirect":
            self._reply(int(query.get("code", "302")), b"", Location=query["to"])
        elif path == "/loop":
            self._reply(302, b"", Location="/loop")
        elif path == "/slow":
            time.sleep(float(query["s"]))
            self._reply(200, b"late")
        elif path == "/big":
            no_length = "no" if query.get("length") == "no" else "yes"
            self._reply(
                200,
                query.get("fill", "a").encode() * int(query["n"]),
                query.get("type", "text/plain"),
                length=no_length,
            )
        elif path == "/png":
            self._reply(200, PNG, "image/png")
        elif path == "/latin1":
            self._reply(200, "café".encode("latin-1"), "text/plain; charset=latin-1")
        elif path == "/attachment":
            self._reply(200, b"a,b\n1,2\n", "text/csv", Content_Disposition='attachment; f="x"')
        else:
            self._reply(404, b"no such path")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__((host, 0), _Handler)
        self.hits: list[tuple[str, str]] = []
        self.sni: list[str | None] = []

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def url(self, path: str, *, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (timeouts) is expected here


@pytest.fixture
def server() -> Iterator[_Server]:
    httpd = _Server()
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def connections(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every connection attempt; one to a non-loopback address fails the test."""
    attempts: list[tuple[str, int]] = []
    original = asyncio.base_events.BaseEventLoop.create_connection

    async def watched(self, protocol_factory, host=None, port=None, *args, **kwargs):  # type: ignore[no-untyped-def]
        attempts.append((host, port))
        address = ipaddress.ip_address(host)
        mapped = getattr(address, "ipv4_mapped", None)
        if not (address.is_loopback or (mapped is not None and mapped.is_loopback)):
            raise AssertionError(f"test tried to connect to {host}:{port}")
        return await original(self, protocol_factory, host, port, *args, **kwargs)

    monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "create_connection", watched)
    return attempts


def resolve_as(monkeypatch: pytest.MonkeyPatch, names: dict[str, list[str]]) -> None:
    async def fake(host: str, port: int) -> list[str]:
        if host not in names:
            raise socket.gaierror(f"{host}: unknown in this test")
        return names[host]

    monkeypatch.setattr(ssrf, "resolve_host", fake)


#: loopback is allowed only for 127.0.0.1: the guard and its address pinning stay on
LOOPBACK = ("127.0.0.1",)


def context(
    *, allow: tuple[str, ...] = LOOPBACK, private: bool = False, upstreams: bool = True
) -> ExecutionContext:
    return ExecutionContext(
        allow_private_networks=private,
        http_allow_list=allow,
        upstreams=Upstreams() if upstreams else None,
    )


def http_task(url: str, *, values: dict[str, Any] | None = None, **data: Any) -> NodeTask:
    return NodeTask(
        task_id="run-1/-/http1/0",
        run_id="run-1",
        node_id="http1",
        node_type="http-request",
        node_title="Fetch",
        data={
            "type": "http-request",
            "method": "get",
            "url": url,
            "authorization": {"type": "no-auth", "config": None},
            "headers": "",
            "params": "",
            "body": {"type": "none", "data": []},
            "timeout": {"max_connect_timeout": 0, "max_read_timeout": 0, "max_write_timeout": 0},
            **data,
        },
        variables=values or {},
    )


async def run(task: NodeTask, ctx: ExecutionContext | None = None) -> TaskResult:
    return await execute_task(task, ctx or context())


async def echo(task: NodeTask, ctx: ExecutionContext | None = None) -> dict[str, Any]:
    result = await run(task, ctx)
    assert result.status == "succeeded", result.error
    assert result.outputs["status_code"] == 200
    assert result.outputs["files"] == []
    echoed: dict[str, Any] = json.loads(result.outputs["body"])
    return echoed


def body(kind: str, *items: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "data": list(items)}


def text(value: str, key: str = "") -> dict[str, Any]:
    return {"type": "text", "key": key, "value": value}


# ---- requests ----


@pytest.mark.parametrize("method", ["get", "POST", "put", "patch", "delete", "options"])
async def test_methods(server: _Server, method: str) -> None:
    echoed = await echo(http_task(server.url("/echo"), method=method))
    assert echoed["method"] == method.upper()


async def test_head_has_no_body(server: _Server) -> None:
    result = await run(http_task(server.url("/echo"), method="head"))
    assert result.status == "succeeded", result.error
    assert result.outputs["status_code"] == 200
    assert result.outputs["body"] == ""
    assert server.hits == [("HEAD", "/echo")]


async def test_unknown_method_is_refused(server: _Server) -> None:
    result = await run(http_task(server.url("/echo"), method="trace"))
    assert (result.error_type, result.retryable) == ("InvalidHttpMethodError", False)
    assert server.hits == []


async def test_url_headers_and_params_are_templated(server: _Server) -> None:
    task = http_task(
        server.url("/echo?fixed=1&{{#start.extra#}}"),
        headers="X-Trace: {{#start.trace#}}\nX-Empty\n  X-Spaced :  padded  \n\nX-Colon: a:b",
        params="q:{{#start.query#}}\ntag:a\ntag:b\n{{#start.key#}}:{{#start.multiline#}}\n:skipped",
        values={
            "start.extra": "extra=2",
            "start.trace": "t-1",
            "start.query": "hello world & more",
            "start.key": "k",
            "start.multiline": "line1\nline2",
        },
    )
    echoed = await echo(task)
    headers = echoed["headers"]
    assert headers["x-trace"] == "t-1"
    assert headers["x-empty"] == ""
    assert headers["x-spaced"] == "padded"
    assert headers["x-colon"] == "a:b"
    assert echoed["query"] == [
        ["fixed", "1"],
        ["extra", "2"],
        ["q", "hello world & more"],
        ["tag", "a"],
        ["tag", "b"],
        ["k", "line1\nline2"],
    ]


async def test_header_values_may_be_non_ascii_but_names_must_be_tokens(server: _Server) -> None:
    echoed = await echo(http_task(server.url("/echo"), headers="X-Title: Café ✓"))
    assert echoed["headers"]["x-title"].encode("latin-1").decode() == "Café ✓"
    result = await run(http_task(server.url("/echo"), headers="Bad Name: x"))
    assert (result.error_type, result.retryable) == ("InvalidHeaderError", False)
    assert server.hits == [("GET", "/echo")]


async def test_a_missing_variable_reads_as_its_name(server: _Server) -> None:
    echoed = await echo(http_task(server.url("/echo"), params="q:{{#start.missing#}}"))
    assert echoed["query"] == [["q", "start.missing"]]


@pytest.mark.parametrize(
    "config, header, value",
    [
        ({"type": "bearer", "api_key": "{{#env.key#}}"}, "authorization", "Bearer sk-1"),
        (
            {"type": "basic", "api_key": "ada:secret"},
            "authorization",
            "Basic " + base64.b64encode(b"ada:secret").decode(),
        ),
        (
            {"type": "basic", "api_key": "YWRhOnNlY3JldA=="},
            "authorization",
            "Basic YWRhOnNlY3JldA==",
        ),
        ({"type": "custom", "api_key": "sk-2", "header": "X-Api-Key"}, "x-api-key", "sk-2"),
        ({"type": "bearer", "api_key": "sk-3", "header": "X-Auth"}, "x-auth", "Bearer sk-3"),
    ],
)
async def test_authorization(
    server: _Server, config: dict[str, str], header: str, value: str
) -> None:
    task = http_task(
        server.url("/echo"),
        headers="Authorization: overridden",
        authorization={"type": "api-key", "config": config},
        values={"env.key": "sk-1"},
    )
    echoed = await echo(task)
    assert echoed["headers"][header] == value


async def test_an_empty_api_key_is_refused(server: _Server) -> None:
    task = http_task(
        server.url("/echo"),
        authorization={"type": "api-key", "config": {"type": "bearer", "api_key": "{{#a.b#}}"}},
        values={"a.b": ""},
    )
    result = await run(task)
    assert result.error_type == "AuthorizationConfigError"
    assert "Fetch" in (result.error or "") and "API key" in (result.error or "")
    assert server.hits == []


async def test_no_body_sends_an_empty_one(server: _Server) -> None:
    echoed = await echo(http_task(server.url("/echo"), method="post"))
    assert echoed["body"] == ""
    assert echoed["headers"]["content-length"] == "0"


async def test_raw_text_body(server: _Server) -> None:
    task = http_task(
        server.url("/echo"),
        method="post",
        body=body("raw-text", text("hi {{#start.name#}} ✓")),
        values={"start.name": "Ada"},
    )
    echoed = await echo(task)
    assert echoed["body"] == "hi Ada ✓"
    assert echoed["headers"]["content-type"] == "text/plain"


async def test_json_body(server: _Server) -> None:
    task = http_task(
        server.url("/echo"),
        method="post",
        body=body("json", text('{"name": "{{#start.name#}}", "n": {{#start.n#}}}')),
        values={"start.name": "Ada", "start.n": 3},
    )
    echoed = await echo(task)
    assert json.loads(echoed["body"]) == {"name": "Ada", "n": 3}
    assert echoed["headers"]["content-type"] == "application/json"


async def test_the_nodes_content_type_wins(server: _Server) -> None:
    task = http_task(
        server.url("/echo"),
        method="post",
        headers="content-type: application/vnd.api+json",
        body=body("json", text("[1]")),
    )
    echoed = await echo(task)
    assert echoed["headers"]["content-type"] == "application/vnd.api+json"


async def test_invalid_json_body_fails_before_sending(server: _Server) -> None:
    task = http_task(server.url("/echo"), method="post", body=body("json", text("{nope")))
    result = await run(task)
    assert (result.error_type, result.reason, result.retryable) == (
        "RequestBodyError",
        "invalid",
        False,
    )
    assert server.hits == []


@pytest.mark.parametrize(
    ("broken", "repaired"),
    [
        ('{"a": 1 "b": "{{#start.name#}}"}', {"a": 1, "b": "Ada"}),  # a missing comma
        ('{"a": [1, 2,], }', {"a": [1, 2]}),  # trailing commas
        ("{'a': 'x'}", {"a": "x"}),  # single quotes
    ],
)
async def test_a_broken_json_body_is_repaired_before_sending(
    server: _Server, broken: str, repaired: dict[str, Any]
) -> None:
    task = http_task(
        server.url("/echo"),
        method="post",
        body=body("json", text(broken)),
        values={"start.name": "Ada"},
    )
    echoed = await echo(task)
    assert json.loads(echoed["body"]) == repaired


async def test_an_empty_form_data_file_item_is_left_out(server: _Server) -> None:
    items = (
        text("v", key="note"),
        {"type": "file", "key": "upload", "file": ["start", "doc"]},
        {"type": "file", "key": "more", "file": ["start", "docs"]},
    )
    task = http_task(
        server.url("/echo"),
        method="post",
        body=body("form-data", *items),
        values={"start.doc": None, "start.docs": []},
    )
    echoed = await echo(task)
    assert 'name="note"' in echoed["body"]
    assert "upload" not in echoed["body"] and "more" not in echoed["body"]


async def test_urlencoded_body(server: _Server) -> None:
    task = http_task(
        server.url("/echo"),
        method="post",
        body=body(
            "x-www-form-urlencoded", text("a b", key="first"), text("{{#s.v#}}", key="second")
        ),
        values={"s.v": "x&y=z"},
    )
    echoed = await echo(task)
    assert echoed["headers"]["content-type"] == "application/x-www-form-urlencoded"
    assert parse_qsl(echoed["body"]) == [("first", "a b"), ("second", "x&y=z")]


async def test_form_data_body(server: _Server) -> None:
    task = http_task(
        server.url("/echo"),
        method="post",
        headers="Content-Type: text/plain",
        body=body("form-data", text("Ada", key="name"), text("line1\nline2", key='we"ird')),
    )
    echoed = await echo(task)
    content_type = echoed["headers"]["content-type"]
    assert content_type.startswith("multipart/form-data; boundary=")
    boundary = content_type.split("boundary=", 1)[1]
    assert echoed["body"] == (
        f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nAda\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="we%22ird"\r\n\r\n'
        f"line1\nline2\r\n--{boundary}--\r\n"
    )


@pytest.mark.parametrize(
    "request_body",
    [
        body("form-data", {"type": "file", "key": "upload", "file": ["start", "doc"]}),
        body("binary", {"type": "file", "file": ["start", "doc"]}),
    ],
)
async def test_file_bodies_are_refused_clearly(
    server: _Server, request_body: dict[str, Any]
) -> None:
    file = {"type": "document", "transfer_method": "remote_url", "url": "https://x.example/a"}
    task = http_task(
        server.url("/echo"), method="post", body=request_body, values={"start.doc": file}
    )
    result = await run(task)
    assert (result.error_type, result.retryable) == ("NotSupportedError", False)
    assert "not supported yet" in (result.error or "")
    assert server.hits == []


async def test_legacy_string_body_data(server: _Server) -> None:
    task = http_task(server.url("/echo"), method="post", body={"type": "raw-text", "data": "x"})
    assert (await echo(task))["body"] == "x"


async def test_invalid_urls(server: _Server) -> None:
    for url, expected in [("", "url is required"), ("ftp://x/", "should start with http")]:
        result = await run(http_task(url))
        assert result.error_type == "InvalidURLError"
        assert expected in (result.error or "")


# ---- responses ----


async def test_outputs(server: _Server) -> None:
    result = await run(http_task(server.url("/latin1")))
    assert result.status == "succeeded", result.error
    outputs = result.outputs
    assert outputs["body"] == "café"
    assert outputs["headers"]["content-type"] == "text/plain; charset=latin-1"
    assert all(key == key.lower() for key in outputs["headers"])
    assert outputs["files"] == []


async def test_non_2xx_is_a_result_without_error_strategy_or_retry(server: _Server) -> None:
    result = await run(http_task(server.url("/status/404")))
    assert result.status == "succeeded"
    assert (result.outputs["status_code"], result.outputs["body"]) == (404, "status 404")


@pytest.mark.parametrize(
    "settings",
    [
        {"error_strategy": "fail-branch"},
        {"error_strategy": "default-value"},
        {"retry_config": {"retry_enabled": True, "max_retries": 2, "retry_interval": 100}},
        {"fanflow": {"retry": {"max_retries": 2}}},
    ],
)
async def test_non_2xx_fails_with_error_strategy_or_retry(
    server: _Server, settings: dict[str, Any]
) -> None:
    result = await run(http_task(server.url("/status/404"), **settings))
    assert result.status == "failed"
    assert result.error == "http1 (Fetch): Request failed with status code 404"
    assert (result.error_type, result.reason, result.retryable) == (
        "HTTPResponseCodeError",
        "status_4xx",
        True,
    )


async def test_disabled_retry_config_does_not_fail_on_status(server: _Server) -> None:
    task = http_task(server.url("/status/404"), retry_config={"retry_enabled": False})
    assert (await run(task)).status == "succeeded"


async def test_5xx_on_get_is_retried_in_the_worker_then_returned(server: _Server) -> None:
    result = await run(http_task(server.url("/status/503")))
    assert result.status == "succeeded"
    assert result.outputs["status_code"] == 503
    assert server.hits == [("GET", "/status/503")] * 3


async def test_5xx_fails_a_node_with_retry_config(server: _Server) -> None:
    task = http_task(server.url("/status/502"), retry_config={"retry_enabled": True})
    result = await run(task)
    assert (result.error_type, result.reason, result.retryable) == (
        "HTTPResponseCodeError",
        "status_5xx",
        True,
    )
    assert "502" in (result.error or "")


async def test_post_is_not_retried_in_the_worker(server: _Server) -> None:
    result = await run(http_task(server.url("/status/503"), method="post"))
    assert result.outputs["status_code"] == 503
    assert server.hits == [("POST", "/status/503")]


async def test_a_long_retry_after_goes_back_to_the_scheduler(server: _Server) -> None:
    task = http_task(server.url("/status/429?retry_after=30"), error_strategy="fail-branch")
    started = time.monotonic()
    result = await run(task)
    assert time.monotonic() - started < 5
    assert (result.reason, result.retryable, result.retry_after_ms) == ("status_429", True, 30000)
    assert server.hits == [("GET", "/status/429")]


async def test_without_upstreams_one_attempt(server: _Server) -> None:
    result = await run(http_task(server.url("/status/503")), context(upstreams=False))
    assert result.outputs["status_code"] == 503
    assert len(server.hits) == 1


async def test_read_timeout(server: _Server) -> None:
    task = http_task(server.url("/slow?s=3"), method="post", timeout={"read": 0.3})
    started = time.monotonic()
    result = await run(task)
    assert time.monotonic() - started < 2.5
    assert (result.status, result.reason, result.retryable) == ("failed", "timeout", True)
    assert "timed out" in (result.error or "")


async def test_timeouts_default_to_and_are_capped_at_difys_maxima() -> None:
    assert http_module._timeout(None).as_dict() == {
        "connect": 10.0,
        "read": 600.0,
        "write": 600.0,
        "pool": 10.0,
    }
    capped = http_module._timeout({"connect": 99, "read": 5, "write": 0})
    assert (capped.connect, capped.read, capped.write) == (10.0, 5.0, 600.0)


async def test_connection_refused() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = await run(http_task(f"http://127.0.0.1:{port}/", method="post"))
    assert (result.reason, result.retryable, result.error_type) == (
        "connect",
        True,
        "HttpRequestNodeError",
    )
    assert "cannot connect" in (result.error or "")


@pytest.mark.parametrize("length", ["yes", "no"])
async def test_text_over_the_size_limit(server: _Server, length: str) -> None:
    n = http_module.MAX_TEXT_BYTES + 1
    result = await run(http_task(server.url(f"/big?n={n}&length={length}")))
    assert (result.error_type, result.reason, result.retryable) == (
        "ResponseSizeError",
        "invalid",
        False,
    )
    assert "too large" in (result.error or "") and "1.00 MB" in (result.error or "")


async def test_text_at_the_size_limit(server: _Server) -> None:
    result = await run(http_task(server.url(f"/big?n={http_module.MAX_TEXT_BYTES}")))
    assert result.status == "succeeded"
    assert len(result.outputs["body"]) == http_module.MAX_TEXT_BYTES


async def test_binary_over_the_size_limit(server: _Server) -> None:
    n = http_module.MAX_BINARY_BYTES + 1
    result = await run(http_task(server.url(f"/big?n={n}&type=image/png&length=no")))
    assert result.error_type == "ResponseSizeError"
    assert "10.00 MB" in (result.error or "")


@pytest.mark.parametrize("path", ["/png", "/attachment"])
async def test_file_responses_are_refused_clearly(server: _Server, path: str) -> None:
    result = await run(http_task(server.url(path)))
    assert (result.error_type, result.retryable) == ("NotSupportedError", False)
    assert "the response is a file" in (result.error or "")


@pytest.mark.parametrize("fill, is_text", [("{", True), ("a", False)])
async def test_octet_streams_that_look_like_text_are_text(
    server: _Server, fill: str, is_text: bool
) -> None:
    result = await run(
        http_task(server.url(f"/big?n=10&fill={fill}&type=application/octet-stream"))
    )
    assert (result.status == "succeeded") is is_text, result.error  # Dify's test
    if is_text:
        assert result.outputs["body"] == fill * 10


# ---- redirects ----


async def test_redirects_are_followed(server: _Server) -> None:
    task = http_task(server.url("/redirect?to=/echo%3Fafter%3D1"))
    echoed = await echo(task)
    assert echoed["query"] == [["after", "1"]]
    assert server.hits == [("GET", "/redirect"), ("GET", "/echo")]


@pytest.mark.parametrize(
    "code, method, kept", [(303, "GET", False), (302, "GET", False), (307, "POST", True)]
)
async def test_redirects_of_a_post(server: _Server, code: int, method: str, kept: bool) -> None:
    task = http_task(
        server.url(f"/redirect?to=/echo&code={code}"),
        method="post",
        body=body("raw-text", text("payload")),
    )
    echoed = await echo(task)
    assert echoed["method"] == method
    assert (echoed["body"] == "payload") is kept
    assert ("content-type" in echoed["headers"]) is kept


async def test_too_many_redirects(server: _Server) -> None:
    result = await run(http_task(server.url("/loop")))
    assert (result.error_type, result.retryable) == ("TooManyRedirectsError", False)
    assert len(server.hits) == http_module.MAX_REDIRECTS + 1


async def test_credentials_do_not_follow_a_redirect_to_another_origin(server: _Server) -> None:
    target = server.url("/echo", host="localhost")
    task = http_task(
        server.url(f"/redirect?to={target}"),
        headers="Cookie: c=1\nX-Other: kept",
        authorization={
            "type": "api-key",
            "config": {"type": "custom", "api_key": "k", "header": "X-Key"},
        },
    )
    echoed = await echo(task, context(allow=("127.0.0.1", "localhost")))
    headers = echoed["headers"]
    assert "x-key" not in headers and "cookie" not in headers
    assert headers["x-other"] == "kept"
    assert headers["host"] == f"localhost:{server.port}"


# ---- the SSRF guard ----


def refusals(category: str) -> float:
    return (
        REGISTRY.get_sample_value("fanflow_http_ssrf_refusals_total", {"category": category}) or 0
    )


@pytest.mark.parametrize(
    "url, address, why",
    [
        ("http://127.0.0.1:8080/", "127.0.0.1", "a loopback address"),
        ("http://10.0.0.1/", "10.0.0.1", "a private address"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254", "cloud metadata"),
        ("http://[::1]:8080/", "::1", "a loopback address"),
        ("http://[::ffff:127.0.0.1]/", "::ffff:127.0.0.1", "IPv4-mapped 127.0.0.1"),
        ("http://100.64.0.1/", "100.64.0.1", "CGNAT"),
        ("http://0.0.0.0:8080/", "0.0.0.0", "an unspecified address"),
        ("http://localhost:8080/", "localhost resolves to", "a loopback address"),
    ],
)
async def test_private_destinations_are_refused_by_default(
    connections: list[tuple[str, int]], url: str, address: str, why: str
) -> None:
    result = await run(http_task(url), context(allow=()))
    assert result.status == "failed"
    assert (result.reason, result.retryable, result.error_type) == ("ssrf", False, "SSRFError")
    error = result.error or ""
    assert error.startswith("http1 (Fetch): request to ")
    assert address in error and why in error
    assert "FANFLOW_HTTP_ALLOW_PRIVATE_NETWORKS=true" in error
    assert connections == []


async def test_a_name_is_refused_when_any_of_its_addresses_is_private(
    monkeypatch: pytest.MonkeyPatch, connections: list[tuple[str, int]]
) -> None:
    resolve_as(
        monkeypatch, {"internal.test": ["10.1.2.3"], "mixed.test": ["93.184.216.34", "127.0.0.1"]}
    )
    before = refusals("private")
    result = await run(http_task("http://internal.test/"), context(allow=()))
    assert "internal.test resolves to 10.1.2.3, which is a private address" in (result.error or "")
    assert refusals("private") == before + 1
    result = await run(http_task("https://mixed.test/"), context(allow=()))
    assert result.reason == "ssrf" and "127.0.0.1" in (result.error or "")
    assert connections == []


async def test_an_unknown_host_is_a_connect_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    resolve_as(monkeypatch, {})
    result = await run(http_task("http://nowhere.test/"), context(allow=(), upstreams=False))
    assert (result.reason, result.retryable) == ("connect", True)
    assert "cannot resolve host nowhere.test" in (result.error or "")


async def test_the_connection_goes_to_the_checked_address_with_the_hosts_name(
    monkeypatch: pytest.MonkeyPatch, server: _Server, connections: list[tuple[str, int]]
) -> None:
    resolve_as(monkeypatch, {"api.test": ["127.0.0.1"]})
    echoed = await echo(http_task(server.url("/echo", host="api.test")), context(allow=LOOPBACK))
    assert echoed["headers"]["host"] == f"api.test:{server.port}"
    assert connections == [("127.0.0.1", server.port)]


async def test_a_redirect_to_a_private_address_is_refused(
    server: _Server, connections: list[tuple[str, int]]
) -> None:
    elsewhere = f"http://127.0.0.2:{server.port}/echo"
    result = await run(http_task(server.url(f"/redirect?to={elsewhere}")), context(allow=LOOPBACK))
    assert (result.reason, result.retryable) == ("ssrf", False)
    assert "request to 127.0.0.2 refused: 127.0.0.2 is a loopback address" in (result.error or "")
    assert server.hits == [("GET", "/redirect")]
    assert connections == [("127.0.0.1", server.port)]


async def test_an_allowed_name_does_not_allow_what_it_redirects_to(
    server: _Server, connections: list[tuple[str, int]]
) -> None:
    task = http_task(server.url(f"/redirect?to={server.url('/echo')}", host="localhost"))
    result = await run(task, context(allow=("localhost",)))
    assert result.reason == "ssrf"
    assert "request to 127.0.0.1 refused" in (result.error or "")
    assert server.hits == [("GET", "/redirect")]


async def test_opt_ins(server: _Server) -> None:
    await echo(http_task(server.url("/echo")), context(allow=(), private=True))
    await echo(http_task(server.url("/echo")), context(allow=("127.0.0.0/8",)))
    await echo(http_task(server.url("/echo", host="localhost")), context(allow=("localhost",)))
    await echo(http_task(server.url("/echo", host="[::ffff:127.0.0.1]")), context(allow=LOOPBACK))


# ---- TLS: the pinned address keeps the host's name for SNI and the certificate check ----


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[_Server, Path]]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    try:
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
                *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"),
                *("-addext", "subjectAltName=DNS:localhost"),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
    except FileNotFoundError:
        pytest.fail("the TLS tests need the openssl command: apt-get install openssl")
    httpd = _Server()
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    tls.sni_callback = lambda sock, name, ctx: httpd.sni.append(name)  # type: ignore[assignment,misc]
    httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd, cert
    httpd.shutdown()
    httpd.server_close()


async def test_tls_verifies_the_hosts_name_on_the_pinned_address(
    monkeypatch: pytest.MonkeyPatch, tls_server: tuple[_Server, Path]
) -> None:
    httpd, cert = tls_server
    monkeypatch.setitem(http_module._SSL_CONTEXTS, True, ssl.create_default_context(cafile=cert))
    resolve_as(monkeypatch, {"localhost": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    url = httpd.url("/echo", host="localhost", scheme="https")
    echoed = await echo(http_task(url), context(allow=LOOPBACK))
    assert echoed["headers"]["host"] == f"localhost:{httpd.port}"
    assert httpd.sni == ["localhost"]
    # the same server under a name its certificate does not carry
    wrong = httpd.url("/echo", host="other.test", scheme="https")
    result = await run(http_task(wrong), context(allow=LOOPBACK, upstreams=False))
    assert result.reason == "connect" and "CERTIFICATE_VERIFY_FAILED" in (result.error or "")
    # unless the node turns verification off
    assert (await run(http_task(wrong, ssl_verify=False), context(allow=LOOPBACK))).status == (
        "succeeded"
    )


# ---- header injection ----

FORGED = "x\r\nHost: evil.example\r\nAuthorization: Bearer forged"


@pytest.mark.parametrize(
    "breaker", [FORGED, "x\nAuthorization: Bearer forged", "x\rY: z", "a\x00b"]
)
async def test_a_line_break_in_a_rendered_header_value_fails_the_node(
    server: _Server, breaker: str
) -> None:
    task = http_task(
        server.url("/echo"),
        headers="X-Name: {{#start.name#}}\nX-Fixed: 1",
        values={"start.name": breaker},
    )
    result = await run(task)
    assert result.status == "failed"
    assert (result.error_type, result.retryable) == ("InvalidHeaderError", False)
    assert "'X-Name'" in (result.error or "")
    assert server.hits == []  # nothing reached the listener, forged or not


async def test_a_line_break_in_a_rendered_header_name_fails_the_node(server: _Server) -> None:
    task = http_task(
        server.url("/echo"),
        headers="{{#start.name#}}: v",
        values={"start.name": "X-A\nAuthorization"},
    )
    result = await run(task)
    assert (result.error_type, result.retryable) == ("InvalidHeaderError", False)
    assert server.hits == []


async def test_a_line_break_in_a_rendered_api_key_fails_the_node(server: _Server) -> None:
    task = http_task(
        server.url("/echo"),
        authorization={"type": "api-key", "config": {"type": "bearer", "api_key": "{{#env.k#}}"}},
        values={"env.k": "sk-1\r\nHost: evil.example"},
    )
    result = await run(task)
    assert (result.error_type, result.retryable) == ("InvalidHeaderError", False)
    assert "'Authorization'" in (result.error or "")
    assert server.hits == []


async def test_header_values_are_rendered_after_splitting_so_text_stays_one_header(
    server: _Server,
) -> None:
    # a value that looks like more headers, without a line break, stays one header's value
    task = http_task(
        server.url("/echo"),
        headers="X-Note: {{#start.note#}}\nX-Other: {{#start.other#}}",
        values={"start.note": "a: Host: evil.example", "start.other": "Authorization: forged"},
    )
    echoed = await echo(task)
    headers = echoed["headers"]
    assert headers["x-note"] == "a: Host: evil.example"
    assert headers["x-other"] == "Authorization: forged"
    assert headers["host"] == f"127.0.0.1:{server.port}"
    assert "authorization" not in headers
