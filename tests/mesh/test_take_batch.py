"""`take_batch`: a batch goes at once when the broker says nothing more is ready."""

from __future__ import annotations

import asyncio

from fanflow.mesh.transport import take_batch

#: a window far longer than any test may take: reaching it would fail the bound below
LONG_WINDOW_S = 60.0
BOUND_S = 20.0


async def test_a_lone_item_goes_at_once_when_nothing_more_is_ready() -> None:
    buffer: asyncio.Queue[int | None] = asyncio.Queue()
    asked: list[int] = []

    async def more_ready() -> bool:
        asked.append(1)
        return False

    batch, ended = await asyncio.wait_for(
        take_batch(buffer, 1, batch_size=50, max_wait_s=LONG_WINDOW_S, more_ready=more_ready),
        BOUND_S,
    )
    assert (batch, ended) == ([1], False)
    assert len(asked) == 1


async def test_items_arriving_while_asking_join_the_batch() -> None:
    buffer: asyncio.Queue[int | None] = asyncio.Queue()

    async def more_ready() -> bool:
        buffer.put_nowait(2)  # delivered while the question was on the wire
        buffer.put_nowait(3)
        return False

    batch, _ = await asyncio.wait_for(
        take_batch(buffer, 1, batch_size=50, max_wait_s=LONG_WINDOW_S, more_ready=more_ready),
        BOUND_S,
    )
    assert batch == [1, 2, 3]


async def test_the_window_is_waited_for_when_more_is_ready() -> None:
    buffer: asyncio.Queue[int | None] = asyncio.Queue()

    async def more_ready() -> bool:
        async def arrive() -> None:
            await asyncio.sleep(0.01)
            buffer.put_nowait(2)
            buffer.put_nowait(None)

        asyncio.get_running_loop().create_task(arrive())
        return True

    batch, ended = await asyncio.wait_for(
        take_batch(buffer, 1, batch_size=50, max_wait_s=LONG_WINDOW_S, more_ready=more_ready),
        BOUND_S,
    )
    assert (batch, ended) == ([1, 2], True)


async def test_a_full_batch_does_not_ask() -> None:
    buffer: asyncio.Queue[int | None] = asyncio.Queue()
    for i in range(2, 6):
        buffer.put_nowait(i)

    async def more_ready() -> bool:
        raise AssertionError("a full batch needs no question")

    batch, _ = await take_batch(buffer, 1, batch_size=3, max_wait_s=0.0, more_ready=more_ready)
    assert batch == [1, 2, 3]
