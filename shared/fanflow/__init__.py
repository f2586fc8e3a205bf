"""fanflow: Dify-style AI workflows, in one process or across a fleet of workers.

The public surface services and embedders use; everything else is internal. Names are
imported on first use (``from fanflow import Store``), so ``import fanflow`` stays cheap
for the command line.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS = {
    # settings and process plumbing
    "Settings": "fanflow.settings",
    "configure_logging": "fanflow.lifecycle",
    "run_until_signalled": "fanflow.lifecycle",
    "serve_metrics": "fanflow.lifecycle",
    "start_heartbeat": "fanflow.health",
    # errors and vocabulary
    "FanflowError": "fanflow.errors",
    "InputsInvalid": "fanflow.errors",
    "WorkflowInvalid": "fanflow.errors",
    "RunStatus": "fanflow.vocabulary",
    "EventName": "fanflow.vocabulary",
    "ExitCode": "fanflow.vocabulary",
    "FINISHED_STATUSES": "fanflow.vocabulary",
    # workflows and runs
    "load_workflow": "fanflow.dsl.load",
    "RunRequest": "fanflow.runtime",
    "EmbeddedRunner": "fanflow.runner",
    "RunResult": "fanflow.runner",
    # the mesh
    "AmqpBroker": "fanflow.mesh.amqp",
    "MemoryBroker": "fanflow.mesh.memory",
    "BrokerError": "fanflow.mesh.transport",
    "Aggregator": "fanflow.mesh.aggregator",
    "Worker": "fanflow.mesh.worker",
    "RunDriver": "fanflow.mesh.driver",
    "OutboxRelay": "fanflow.mesh.relay",
    "prefetch_for": "fanflow.mesh.prefetch",
    # running nodes
    "NodeTask": "fanflow.messages",
    "TaskResult": "fanflow.messages",
    "execute_with_timeout": "fanflow.executors",
    "context_from_settings": "fanflow.executors.wiring",
    "http_pool_from_settings": "fanflow.executors.wiring",
    "sandbox_from_settings": "fanflow.executors.wiring",
    "SandboxPool": "fanflow.sandbox.pool",
    # durable state
    "Store": "fanflow.store",
    "migrate": "fanflow.store",
}

__all__ = [
    "FINISHED_STATUSES",
    "Aggregator",
    "AmqpBroker",
    "BrokerError",
    "EmbeddedRunner",
    "EventName",
    "ExitCode",
    "FanflowError",
    "InputsInvalid",
    "MemoryBroker",
    "NodeTask",
    "OutboxRelay",
    "RunDriver",
    "RunRequest",
    "RunResult",
    "RunStatus",
    "SandboxPool",
    "Settings",
    "Store",
    "TaskResult",
    "Worker",
    "WorkflowInvalid",
    "__version__",
    "configure_logging",
    "context_from_settings",
    "execute_with_timeout",
    "http_pool_from_settings",
    "load_workflow",
    "migrate",
    "prefetch_for",
    "run_until_signalled",
    "sandbox_from_settings",
    "serve_metrics",
    "start_heartbeat",
]

if TYPE_CHECKING:
    from fanflow.dsl.load import load_workflow
    from fanflow.errors import FanflowError, InputsInvalid, WorkflowInvalid
    from fanflow.executors import execute_with_timeout
    from fanflow.executors.wiring import (
        context_from_settings,
        http_pool_from_settings,
        sandbox_from_settings,
    )
    from fanflow.health import start_heartbeat
    from fanflow.lifecycle import configure_logging, run_until_signalled, serve_metrics
    from fanflow.mesh.aggregator import Aggregator
    from fanflow.mesh.amqp import AmqpBroker
    from fanflow.mesh.driver import RunDriver
    from fanflow.mesh.memory import MemoryBroker
    from fanflow.mesh.prefetch import prefetch_for
    from fanflow.mesh.relay import OutboxRelay
    from fanflow.mesh.transport import BrokerError
    from fanflow.mesh.worker import Worker
    from fanflow.messages import NodeTask, TaskResult
    from fanflow.runner import EmbeddedRunner, RunResult
    from fanflow.runtime import RunRequest
    from fanflow.sandbox.pool import SandboxPool
    from fanflow.settings import Settings
    from fanflow.store import Store, migrate
    from fanflow.vocabulary import FINISHED_STATUSES, EventName, ExitCode, RunStatus


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fanflow' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
