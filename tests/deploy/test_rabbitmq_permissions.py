"""deploy/rabbitmq's definitions loaded by a real (private) RabbitMQ node: no guest user,
the aggregator's user declares the topology, and the worker's user — what user code could
steal — consumes its task queues and publishes results, but cannot publish a task (to the
tasks exchange or through the default exchange), declare anything or read the results.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fanflow.mesh.amqp import AmqpBroker
from fanflow.mesh.topology import Topology
from fanflow.mesh.transport import BrokerError, Disposition
from fanflow.messages import NodeTask
from tests.faults.rabbit import PrivateRabbit

RABBITMQ = Path(__file__).resolve().parents[2] / "deploy" / "rabbitmq"
PASSWORDS = {
    "RABBITMQ_ADMIN_PASSWORD": "admin-password-1",
    "RABBITMQ_TRIGGER_PASSWORD": "trigger-password-1",
    "RABBITMQ_AGGREGATOR_PASSWORD": "aggregator-password-1",
    "RABBITMQ_WORKER_PASSWORD": "worker-password-1",
}


class DefinedRabbit(PrivateRabbit):
    """A private node that loads the rendered definitions, as compose's broker does."""

    definitions: Path

    def _environment(self) -> dict[str, str]:
        env = super()._environment()
        config = Path(env["RABBITMQ_CONFIG_FILE"])
        conf = (RABBITMQ / "rabbitmq.conf").read_text()
        conf = conf.replace("/etc/rabbitmq/fanflow/definitions.json", str(self.definitions))
        config.write_text(
            config.read_text().replace("loopback_users = none\n", "") + conf, encoding="utf-8"
        )
        return env

    def url_for(self, user: str, password: str) -> str:
        return f"amqp://{user}:{password}@127.0.0.1:{self.port}/fanflow"


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DefinedRabbit]:
    directory = tmp_path_factory.mktemp("rabbit-defs")
    definitions = directory / "definitions.json"
    subprocess.run(
        [sys.executable, str(RABBITMQ / "render_definitions.py"),
         str(RABBITMQ / "definitions.json"), str(definitions)],
        env={"PATH": "/usr/bin:/bin", **PASSWORDS}, check=True,
    )  # fmt: skip
    node = DefinedRabbit(directory / "node")
    node.definitions = definitions
    node.start()
    try:
        yield node
    finally:
        node.close()


def broker(rabbit: DefinedRabbit, role: str, topology: Topology) -> AmqpBroker:
    password = PASSWORDS[f"RABBITMQ_{role.upper()}_PASSWORD"]
    return AmqpBroker(rabbit.url_for(f"fanflow-{role}", password), topology=topology)


def task() -> NodeTask:
    return NodeTask(task_id="r/-/n/0", run_id="r", node_id="n", node_type="code", data={})


async def test_worker_user_reads_tasks_and_publishes_results_only(rabbit: DefinedRabbit) -> None:
    topology = Topology(namespace="fanflow")
    async with broker(rabbit, "aggregator", topology) as aggregator:
        await aggregator.declare()
        await aggregator.publish_task(task())
        async with broker(rabbit, "worker", topology) as worker:
            got: asyncio.Queue[bytes] = asyncio.Queue()

            async def handle(
                body: bytes, headers: dict[str, Any], redelivered: bool
            ) -> Disposition:
                got.put_nowait(body)
                return Disposition.ACK

            await worker.consume(topology.task_queue("code"), handle, prefetch=1)
            assert NodeTask.decode(await asyncio.wait_for(got.get(), 10)).task_id == "r/-/n/0"
            await worker.publish_result(task().result(status="succeeded"))
        # attacks with the worker's credentials, each on a fresh connection
        attacks = {
            "publish a task": lambda b: b.publish_task(task()),
            "publish to a task queue through the default exchange": lambda b: b.publish_raw(
                "", topology.task_queue("code"), task().encode(), message_id="x"
            ),
            "declare the topology": lambda b: b.declare(),
        }
        for what, attack in attacks.items():
            async with broker(rabbit, "worker", topology) as thief:
                with pytest.raises(BrokerError) as refused:
                    await asyncio.wait_for(attack(thief), 10)
                assert "ACCESS_REFUSED" in repr(refused.value), f"{what}: {refused.value!r}"
                assert "fanflow-worker" in repr(refused.value)
        # nor read other results (consume the results queue)
        async with broker(rabbit, "worker", topology) as thief:
            with pytest.raises(BrokerError, match="ACCESS_REFUSED"):
                await asyncio.wait_for(
                    thief.consume(topology.results_queue, handle, prefetch=1), 10
                )
        # nothing forged reached the task queue: only the genuine task went through
        async with broker(rabbit, "aggregator", topology) as check:
            assert await check.message_count(topology.task_queue("code")) == 0
            assert await check.message_count(topology.results_queue) == 1  # the worker's


async def test_no_guest_user(rabbit: DefinedRabbit) -> None:
    with pytest.raises(Exception, match=r"(?i)access|auth|refused|login"):
        async with AmqpBroker(
            f"amqp://guest:guest@127.0.0.1:{rabbit.port}/", topology=Topology(namespace="x")
        ):
            pass
