"""A stream whose client reads slowly keeps at most a bounded number of events."""

from __future__ import annotations

from fanflow_services.trigger import streams

from fanflow.mesh.amqp import Event


class _Hub:
    def discard(self, watch: object) -> None:
        pass


async def test_a_slow_stream_drops_progress_but_keeps_the_end(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(streams, "STREAM_BUFFER", 3)
    watch = streams.RunWatch(_Hub(), "r1", stream=True)  # type: ignore[arg-type]
    for i in range(10):
        watch.deliver(Event("r1", "node_started", {"data": {"index": i}}))
    watch.deliver(Event("r1", streams.FINISHED_EVENT, {"data": {}}))
    names = []
    while (event := await watch.next(0.01)) is not None:
        names.append(event.name)  # type: ignore[union-attr]
    assert names == ["node_started"] * 3 + [streams.FINISHED_EVENT]
    assert watch.dropped == 7
