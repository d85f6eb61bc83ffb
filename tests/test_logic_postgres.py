"""The logic service on PostgreSQL when another worker's transaction deadlocks with its batch."""

from __future__ import annotations

import asyncio
import logging

import pytest
from conftest import TIMEOUT

from tether.bus import channels
from tether.bus import envelope_pb2 as env
from tether.bus.memory import InProcessBus
from tether.logic import LogicConfig, LogicService, StoredMessage, open_store
from tether.protocol import tether_pb2 as pb

REPLIES = "test.replies"


def send_request(request_id: int, sender: str, recipient: str, client_id: str) -> bytes:
    send = pb.Send(client_message_id=client_id, recipient=recipient, body=b"hi")
    request = env.Envelope(
        reply_to=REPLIES,
        request_id=request_id,
        send_request=env.SendRequest(sender=sender, sender_device="phone", send=send),
    )
    return request.SerializeToString()


async def test_deadlocked_batch_runs_again(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    bus = InProcessBus()
    await bus.start()
    service = LogicService(LogicConfig(database=postgres_url), bus)
    await service.start()
    other = await open_store(postgres_url)  # stands for a second logic worker
    replies: asyncio.Queue[env.Envelope] = asyncio.Queue()
    bus.subscribe(REPLIES, lambda _, payload: replies.put_nowait(env.Envelope.FromString(payload)))
    caplog.set_level(logging.WARNING, logger="tether.logic")

    try:
        await other.add_contacts("alice", "bob")
        await other.add_contacts("carol", "dave")
        other_holds_lock = asyncio.Event()

        async def other_worker() -> StoredMessage:
            async with other.transaction():
                await other.store_direct(
                    sender="carol", sender_device="w", recipient="dave",
                    client_message_id="other-1", body=b"",
                )  # fmt: skip
                other_holds_lock.set()
                # The service's batch now locks d:alice:bob and waits for d:carol:dave, and
                # starts waiting first, so PostgreSQL's deadlock check picks the service's
                # transaction as the one to roll back.
                await asyncio.sleep(0.3)
                return await other.store_direct(
                    sender="alice", sender_device="w", recipient="bob",
                    client_message_id="other-2", body=b"",
                )  # fmt: skip

        other_task = asyncio.create_task(other_worker())
        await other_holds_lock.wait()
        # Appended together, the two requests reach the service as one batch.
        bus.append(channels.LOGIC_STREAM, send_request(1, "alice", "bob", "batch-1"))
        bus.append(channels.LOGIC_STREAM, send_request(2, "carol", "dave", "batch-2"))

        stored_by_other = await asyncio.wait_for(other_task, TIMEOUT)
        results = {}
        for _ in range(2):
            reply = await asyncio.wait_for(replies.get(), TIMEOUT)
            results[reply.request_id] = reply.send_result
    finally:
        await other.close()
        await bus.close()
        await service.close()

    assert stored_by_other.sequence == 1
    assert results[1].error_code == 0, results[1].error_message
    assert results[2].error_code == 0, results[2].error_message
    assert results[1].ack.sequence == 2  # after the other worker's message to bob
    assert results[2].ack.sequence == 2
    assert "running it again" in caplog.text
