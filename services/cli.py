"""The `fanflow` command: the library's commands (`fanflow.cli`: run, validate, health,
mock-llm) and the services' (trigger, worker, aggregator, dev, apps import).

The library knows nothing of its services; this module adds their commands to the
library's Typer app. Each imports its service only when it runs, so `fanflow run` stays
fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from fanflow.cli import _settings, app

__all__ = ["app", "main"]


@app.command()
def trigger(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Serve Dify's Service API (/v1) and the admin API over HTTP."""
    from fanflow_services.trigger.main import serve

    serve(_settings(), host=host, port=port)


@app.command()
def worker(
    queues: Annotated[
        str | None,
        typer.Option(help="Node classes to serve, comma-separated (llm,http,code,tool)."),
    ] = None,
    prefetch: Annotated[
        int | None, typer.Option(help="Concurrent tasks per class: the rate-limit knob.")
    ] = None,
) -> None:
    """Consume node tasks, run them, publish their results."""
    from fanflow_services.worker.main import run as run_worker

    settings = _settings()
    classes = [q.strip() for q in (queues or settings.worker_queues).split(",") if q.strip()]
    run_worker(settings, queues=classes, prefetch=prefetch)


@app.command()
def aggregator() -> None:
    """Consume results, advance runs (fan-in), relay the outbox."""
    from fanflow_services.aggregator.main import run as run_aggregator

    run_aggregator(_settings())


@app.command()
def dev(
    port: Annotated[int, typer.Option(help="Port of the trigger.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes to start.")] = 2,
) -> None:
    """Start trigger, aggregator and N workers as local processes; Ctrl-C stops them all."""
    from fanflow_services.dev import run as run_dev

    raise typer.Exit(run_dev(_settings(), port=port, workers=workers))


apps_app = typer.Typer(help="Manage the workflows registered with a trigger.", no_args_is_help=True)
app.add_typer(apps_app, name="apps")


@apps_app.command("import")
def apps_import(
    file: Annotated[Path, typer.Argument(help="A Dify workflow export (YAML).")],
    url: Annotated[str, typer.Option(help="The trigger's base URL.")] = "http://127.0.0.1:8000",
    admin_token: Annotated[
        str | None, typer.Option(envvar="FANFLOW_ADMIN_TOKEN", help="The admin token.")
    ] = None,
) -> None:
    """Register a workflow as an app and issue an API key; prints {"app_id", "api_key"}."""
    from fanflow_services.trigger.client import import_app

    result = import_app(file, url=url, admin_token=admin_token)
    sys.stdout.write(json.dumps(result) + "\n")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
