"""The live stream's fan-out: publishers never wait on clients, a slow client is dropped
with a `dropped` event, the others keep every event in order."""

from __future__ import annotations

import asyncio
import json
import threading
import time

from controller.service import events
from controller.service.events import CLIENT_QUEUE_MAX, EventHub, sse


def test_a_slow_client_is_dropped_and_the_others_keep_every_event() -> None:
    async def scenario() -> tuple[list[int], bool, bool, float]:
        hub = EventHub()
        hub.bind(asyncio.get_running_loop())
        slow, fast = hub.subscribe(), hub.subscribe()
        assert slow is not None and fast is not None
        got: list[int] = []

        async def read_fast() -> None:
            while len(got) < 3 * CLIENT_QUEUE_MAX:
                message = await fast.queue.get()
                got.append(int(json.loads(message.text.split("data: ", 1)[1])["n"]))

        reader = asyncio.create_task(read_fast())
        worst = 0.0

        def publish() -> None:          # a session thread at full speed
            nonlocal worst
            for n in range(3 * CLIENT_QUEUE_MAX):
                t0 = time.perf_counter()
                hub.publish("telemetry", {"n": n})
                worst = max(worst, time.perf_counter() - t0)
                if n % 64 == 0:
                    time.sleep(0.001)   # let the loop fan out (as a poll period would)

        thread = threading.Thread(target=publish)
        thread.start()
        await asyncio.to_thread(thread.join)
        await asyncio.wait_for(reader, 5)
        return got, slow.dropped, fast.dropped, worst

    got, slow_dropped, fast_dropped, worst = asyncio.run(scenario())
    assert slow_dropped and not fast_dropped
    assert got == list(range(3 * CLIENT_QUEUE_MAX))
    assert worst < 0.05          # one call_soon_threadsafe, never a wait on a client


def test_clients_are_bounded_and_closing_ends_every_stream() -> None:
    async def scenario() -> list[str]:
        hub = EventHub()
        hub.bind(asyncio.get_running_loop())
        subs = [hub.subscribe() for _ in range(events.MAX_CLIENTS)]
        assert all(subs) and hub.subscribe() is None
        hub.close()
        await asyncio.sleep(0.01)
        assert hub.subscribe() is None
        return [s.queue.get_nowait().kind for s in subs if s is not None]

    kinds = asyncio.run(scenario())
    assert kinds == [events.CLOSING] * events.MAX_CLIENTS


def test_publishing_without_a_loop_or_clients_is_a_no_op() -> None:
    hub = EventHub()
    hub.publish("device", {"device": "x"})
    assert hub.published == 0


def test_sse_format() -> None:
    text = sse({"seq": 7, "kind": "device", "data": {"device": "heat-1", "state": "idle"}})
    assert text == 'id: 7\nevent: device\ndata: {"device":"heat-1","state":"idle"}\n\n'
