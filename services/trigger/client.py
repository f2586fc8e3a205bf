"""The admin client behind `fanflow apps import FILE`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import typer

from fanflow.vocabulary import ExitCode

EXIT_FAILED, EXIT_INVALID = ExitCode.FAILED, ExitCode.INVALID

TIMEOUT_S = 30.0


def _fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def import_app(path: Path, *, url: str, admin_token: str | None) -> dict[str, Any]:
    """POST the workflow file to the trigger's `/admin/apps`; `{"app_id", "api_key", ...}`.

    Raises `typer.Exit` (non-zero) after printing what went wrong: an unreadable file, an
    unreachable trigger, a refused token, or every problem of an invalid workflow (exit 2).
    """
    if not admin_token:
        raise _fail("no admin token: pass --admin-token or set FANFLOW_ADMIN_TOKEN")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(f"cannot read {path}: {exc}", EXIT_INVALID) from None
    endpoint = url.rstrip("/") + "/admin/apps"
    try:
        response = httpx.post(
            endpoint,
            content=text.encode("utf-8"),
            headers={
                "Authorization": f"Bearer {admin_token}",
                "Content-Type": "text/yaml; charset=utf-8",
            },
            timeout=TIMEOUT_S,
        )
    except httpx.HTTPError as exc:
        raise _fail(f"cannot reach the trigger at {endpoint}: {exc}") from None
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.is_success and isinstance(body, dict) and "api_key" in body:
        return body
    message = body.get("message") if isinstance(body, dict) else None
    detail = message or response.text[:500] or response.reason_phrase
    problems = body.get("problems") if isinstance(body, dict) else None
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise _fail(
            f"{path}: invalid workflow ({len(problems)} problem(s)):\n{lines}", EXIT_INVALID
        )
    raise _fail(f"{endpoint} answered {response.status_code}: {detail}")
