"""What a logic batch publishes once its transaction has committed, and how replies are built."""

from __future__ import annotations

from dataclasses import dataclass, field

from tether.bus import envelope_pb2 as env
from tether.logic.store import MESSAGE_KIND_GROUP_EVENT, StoredMessage
from tether.protocol import tether_pb2 as pb

__all__ = ["Outbox", "reply", "to_message"]


@dataclass(slots=True)
class Outbox:
    """Messages a batch publishes once its transaction has committed, in order."""

    messages: list[tuple[str, bytes]] = field(default_factory=list)

    def add(self, channel: str, envelope: env.Envelope) -> None:
        self.messages.append((channel, envelope.SerializeToString()))


def reply(outbox: Outbox, request: env.Envelope, answer: env.Envelope) -> None:
    """Queue answer to the requester's reply channel; requests without one get none."""
    if request.reply_to:
        answer.request_id = request.request_id
        outbox.add(request.reply_to, answer)


def to_message(stored: StoredMessage) -> pb.Message:
    """Return the client protocol's form of a stored message or group event."""
    message = pb.Message(
        message_id=stored.message_id,
        conversation_id=stored.conversation_id,
        sequence=stored.sequence,
        sender=stored.sender,
        sender_device=stored.sender_device,
        recipient=stored.recipient,
        timestamp_ms=stored.created_ms,
    )
    if stored.kind == MESSAGE_KIND_GROUP_EVENT:
        message.group_event.ParseFromString(stored.body)
    else:
        message.body = stored.body
        message.client_message_id = stored.client_message_id
    return message
