"""The `fanflow` command."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

# httpx's own command-line client (httpx._main) imports click, rich.syntax and pygments
# (≈80 ms at every start) when they are installed; fanflow never uses it, and httpx
# does without it when it cannot be imported
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

from fanflow import defaults  # noqa: E402
from fanflow.errors import InputsInvalid, WorkflowInvalid  # noqa: E402
from fanflow.health import DEFAULT_MAX_AGE_S  # noqa: E402
from fanflow.vocabulary import SUCCESS_STATUSES, ExitCode  # noqa: E402

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

    from fanflow.settings import Settings

app = typer.Typer(
    help="Run Dify workflows: in one process (run) or across RabbitMQ workers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
#: rich's console on stderr, built on first use: importing rich costs ≈50 ms (tests set it)
_err: Console | None = None

EXIT_OK, EXIT_FAILED, EXIT_INVALID = ExitCode.OK, ExitCode.FAILED, ExitCode.INVALID
#: iterations at least this long get a progress bar on stderr
PROGRESS_MIN_ITEMS = 20


def _parse_inputs(pairs: list[str], inputs_file: Path | None) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    if inputs_file is not None:
        try:
            loaded = json.loads(inputs_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputsInvalid(f"--inputs-file {inputs_file}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise InputsInvalid(f"--inputs-file {inputs_file}: expected a JSON object")
        inputs.update(loaded)
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise InputsInvalid(f"-i {pair!r}: expected NAME=VALUE")
        inputs[name] = value
    return inputs


def _stderr() -> Console:
    global _err
    if _err is None:
        from rich.console import Console

        _err = Console(stderr=True, soft_wrap=True)
    return _err


def _stderr_is_terminal() -> bool:
    return _err.is_terminal if _err is not None else sys.stderr.isatty()


def _print_error(message: str) -> None:
    from rich.text import Text

    _stderr().print(Text.assemble(("error:", "red"), " ", message), highlight=False)


class _IterationProgress:
    """A rich progress bar per long iteration, on stderr, only when stderr is a terminal."""

    def __init__(self) -> None:
        self._progress: Progress | None = None
        self._bars: dict[str, Any] = {}
        self._terminal: bool | None = None

    def __call__(self, emit: Any) -> None:
        if self._terminal is None:
            self._terminal = _stderr_is_terminal()
        if not self._terminal:
            return
        data = emit.data
        key = f"{data.get('scope')}|{data.get('node_id')}"
        if emit.event == "iteration_started" and data.get("count", 0) >= PROGRESS_MIN_ITEMS:
            if self._progress is None:
                from rich.progress import (
                    BarColumn,
                    MofNCompleteColumn,
                    Progress,
                    TextColumn,
                    TimeElapsedColumn,
                )

                self._progress = Progress(
                    TextColumn("{task.description}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeElapsedColumn(),
                    console=_stderr(),
                    transient=True,
                )
                self._progress.start()
            self._bars[key] = self._progress.add_task(data.get("title") or key, total=data["count"])
        elif emit.event == "iteration_next" and key in self._bars and self._progress:
            self._progress.update(self._bars[key], completed=data.get("index", 0))
        elif emit.event == "iteration_completed" and key in self._bars and self._progress:
            self._progress.remove_task(self._bars.pop(key))

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


@app.command()
def run(
    workflow: Annotated[Path, typer.Argument(help="A Dify workflow export (YAML).")],
    inputs: Annotated[
        list[str] | None, typer.Option("-i", "--input", help="An input as NAME=VALUE.")
    ] = None,
    inputs_file: Annotated[
        Path | None, typer.Option("--inputs-file", help="Inputs as a JSON object.")
    ] = None,
    query: Annotated[
        str | None, typer.Option("--query", "-q", help="sys.query for chatflow files.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the run as Dify's blocking API `data`.")
    ] = False,
    max_steps: Annotated[
        int | None,
        typer.Option(
            help=f"Stop the run after this many node runs [FANFLOW_MAX_STEPS: {defaults.MAX_STEPS}]."
        ),
    ] = None,
    max_run_seconds: Annotated[
        float | None,
        typer.Option(
            help=(
                "Stop the run after this long "
                f"[FANFLOW_MAX_RUN_SECONDS: {defaults.MAX_RUN_SECONDS:g}]."
            )
        ),
    ] = None,
    conversation: Annotated[
        Path | None,
        typer.Option(
            "--conversation",
            help="Chatflows: continue the conversation kept in this JSON file (created "
            "when missing); the turn, with memory and conversation variables, is added.",
        ),
    ] = None,
) -> None:
    """Run a workflow in this process and print its outputs as JSON."""
    from fanflow.dsl.load import load_workflow
    from fanflow.executors.wiring import (
        context_from_settings,
        http_pool_from_settings,
        sandbox_from_settings,
    )
    from fanflow.runner import EmbeddedRunner
    from fanflow.runtime import RunRequest

    try:
        settings = _settings()
        limits = settings.limits()
        if max_steps is not None:
            limits = replace(limits, max_steps=max_steps)
        if max_run_seconds is not None:
            limits = replace(limits, max_run_seconds=max_run_seconds)
        loaded = load_workflow(workflow)
        request = RunRequest(inputs=_parse_inputs(inputs or [], inputs_file), query=query)
        kept = None
        if conversation is not None:
            from fanflow.chat.conversation_file import ConversationFile, continue_request

            if loaded.mode != "advanced-chat":
                raise InputsInvalid(
                    f"--conversation: {workflow} is a {loaded.mode} app; only chatflows "
                    "(advanced-chat) have conversations"
                )
            kept = ConversationFile.load(conversation)
            request = continue_request(kept, request)
        progress = _IterationProgress()
        sandbox = sandbox_from_settings(settings)  # owned here, closed below
        runner = EmbeddedRunner(
            limits=limits,
            context=replace(context_from_settings(settings), code_sandbox=sandbox),
            on_event=progress,
            http_pool=lambda: http_pool_from_settings(settings),
        )
        try:
            result = runner.run(loaded, request)
        finally:
            sandbox.close()
            progress.close()
    except (WorkflowInvalid, InputsInvalid) as exc:
        _print_error(str(exc))
        raise typer.Exit(EXIT_INVALID) from None
    if kept is not None:
        kept.add_turn(
            request.query or "", str(result.outputs.get("answer") or ""), result.conversation
        )
        kept.save()
    payload = result.as_dict() if as_json else result.outputs
    sys.stdout.write(json.dumps(payload, ensure_ascii=False, indent=2) + "\n")
    if result.status not in SUCCESS_STATUSES:
        _stderr().print(f"run {result.status}: {result.error}", highlight=False, markup=False)
        raise typer.Exit(EXIT_FAILED)


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(help="Workflow files to check.")],
) -> None:
    """Check workflow files; list every problem. Exit 0 when all are valid, else 2."""
    from fanflow.dsl.load import load_workflow

    bad = 0
    for path in files:
        try:
            load_workflow(path)
        except WorkflowInvalid as exc:
            bad += 1
            _stderr().print(f"{path}: invalid", highlight=False, markup=False)
            for problem in exc.problems:
                _stderr().print(f"  - {problem}", highlight=False, markup=False)
            continue
        typer.echo(f"{path}: ok")
    if bad:
        raise typer.Exit(EXIT_INVALID)


# ---- settings and health ---------------------------------------------------------------


def _settings() -> Settings:
    """The process's settings, built once at its entry point; the template bounds (a
    process-wide setting of the renderer) are applied here too."""
    from fanflow.nodes.template import configure_limits
    from fanflow.settings import Settings

    settings = Settings()
    configure_limits(settings.template_limits())
    return settings


@app.command()
def health(
    file: Annotated[Path, typer.Argument(help="The heartbeat file (FANFLOW_HEALTH_FILE).")],
    max_age_s: Annotated[
        float, typer.Option("--max-age", help="Older than this many seconds: unhealthy.")
    ] = DEFAULT_MAX_AGE_S,
) -> None:
    """Is the worker or aggregator writing FILE doing its work? Exit 0 healthy, 1 not."""
    from fanflow.health import read_heartbeat

    report = read_heartbeat(file, max_age_s=max_age_s)
    typer.echo(report.message, err=not report.healthy)
    if not report.healthy:
        raise typer.Exit(EXIT_FAILED)


@app.command("mock-llm")
def mock_llm(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on; 0 picks a free one.")] = 8399,
    mode: Annotated[
        str, typer.Option(help="Plain answers: hash (of the messages), echo, or fixed.")
    ] = "hash",
    reply: Annotated[str, typer.Option(help="The answer in --mode fixed.")] = "mock reply",
    replies: Annotated[
        Path | None, typer.Option(help="Rules (JSON/YAML) answering by model, node or text.")
    ] = None,
    latency_ms: Annotated[float, typer.Option(help="Delay before every answer.")] = 0.0,
    jitter_ms: Annotated[float, typer.Option(help="Extra random delay, up to this.")] = 0.0,
    error_rate: Annotated[float, typer.Option(help="Share of requests answered 503.")] = 0.0,
    rate_limit_rate: Annotated[
        float, typer.Option(help="Share of requests answered 429 with Retry-After.")
    ] = 0.0,
    timeout_rate: Annotated[
        float, typer.Option(help="Share of requests held for --timeout-sleep-s.")
    ] = 0.0,
    malformed_rate: Annotated[
        float, typer.Option(help="Share of requests answered with malformed JSON.")
    ] = 0.0,
    retry_after_s: Annotated[float, typer.Option(help="Retry-After of 429 answers.")] = 1.0,
    timeout_sleep_s: Annotated[
        float, typer.Option(help="How long a timeout fault holds the answer.")
    ] = 30.0,
    seed: Annotated[int, typer.Option(help="Seed of the fault and jitter draws.")] = 0,
    api_key: Annotated[
        str | None, typer.Option(help="Require this bearer token (default: any).")
    ] = None,
    port_file: Annotated[
        Path | None, typer.Option(help="Write the bound port here once listening.")
    ] = None,
) -> None:
    """Serve a deterministic OpenAI-compatible chat completions API with injectable faults."""
    from fanflow.llm.mock_server import MockOptions, load_replies, serve

    try:
        options = MockOptions(
            mode=mode,
            reply=reply,
            replies=load_replies(replies) if replies else (),
            latency_ms=latency_ms,
            jitter_ms=jitter_ms,
            error_rate=error_rate,
            rate_limit_rate=rate_limit_rate,
            timeout_rate=timeout_rate,
            malformed_rate=malformed_rate,
            retry_after_s=retry_after_s,
            timeout_sleep_s=timeout_sleep_s,
            seed=seed,
            api_key=api_key,
        )
    except (OSError, ValueError) as exc:
        _print_error(str(exc))
        raise typer.Exit(EXIT_INVALID) from None
    serve(options, host=host, port=port, port_file=port_file)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
