"""tether's wire protocol: schema, framing, codes and the sans-I/O connection core.

Nothing in this package performs I/O or imports asyncio.
"""

from tether.protocol import tether_pb2 as pb
from tether.protocol.codes import Code, CodeInfo, describe, is_final
from tether.protocol.connection import PROTOCOL_VERSION, ServerProtocol
from tether.protocol.errors import (
    AuthenticationError,
    BusError,
    BusOverloaded,
    ConnectionClosed,
    FrameTooLarge,
    ProtocolError,
    RequestError,
    TetherError,
)
from tether.protocol.framing import StreamDecoder, encode_varint, prefix_frame
from tether.protocol.states import ConnectionState

__all__ = [
    "PROTOCOL_VERSION",
    "AuthenticationError",
    "BusError",
    "BusOverloaded",
    "Code",
    "CodeInfo",
    "ConnectionClosed",
    "ConnectionState",
    "FrameTooLarge",
    "ProtocolError",
    "RequestError",
    "ServerProtocol",
    "StreamDecoder",
    "TetherError",
    "describe",
    "encode_varint",
    "is_final",
    "pb",
    "prefix_frame",
]
