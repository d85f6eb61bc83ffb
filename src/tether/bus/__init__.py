"""The message bus between gateways, presence and logic."""

from tether.bus import channels
from tether.bus import envelope_pb2 as envelope
from tether.bus.base import Bus, MessageHandler, StreamHandler
from tether.bus.memory import InProcessBus
from tether.bus.requests import AsyncRequester, RequestTracker

__all__ = [
    "AsyncRequester",
    "Bus",
    "InProcessBus",
    "MessageHandler",
    "RequestTracker",
    "StreamHandler",
    "channels",
    "envelope",
]
