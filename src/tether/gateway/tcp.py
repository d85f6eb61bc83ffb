"""TCP transport of the gateway: an asyncio server whose protocol objects are the connections.

With TLS or the PROXY protocol on, each socket starts with a `Preamble` and is handed to a
`TcpConnection` once the client's address is known and the TLS handshake is done.
"""

from __future__ import annotations

import asyncio

from tether.gateway.config import LISTEN_BACKLOG
from tether.gateway.connection import TcpConnection
from tether.gateway.gateway import Gateway
from tether.gateway.preamble import ClientPeer, create_preamble_server, switch_protocol
from tether.gateway.security import TransportSecurity

__all__ = ["start_tcp_server"]


async def start_tcp_server(
    gateway: Gateway, host: str, port: int, security: TransportSecurity | None = None
) -> asyncio.Server:
    """Listen for TCP clients on host:port.

    security defaults to the one built from the gateway's config, which loads the TLS
    certificate if one is set.
    """
    if security is None:
        security = TransportSecurity.from_config(gateway.config.transport_security)
    loop = asyncio.get_running_loop()
    if not security.needs_preamble:
        return await loop.create_server(
            lambda: TcpConnection(gateway, gateway.new_connection_id()),
            host,
            port,
            reuse_address=True,
            reuse_port=gateway.config.reuse_port,
            backlog=LISTEN_BACKLOG,
        )

    def hand_over(transport: asyncio.BaseTransport, peer: ClientPeer) -> asyncio.BaseProtocol:
        connection = TcpConnection(gateway, gateway.new_connection_id())
        switch_protocol(transport, connection)
        connection.transport = transport  # type: ignore[assignment]
        gateway.connection_made(
            connection, peer.address, accepted_at=peer.accepted_at, via=peer.via
        )
        return connection

    return await create_preamble_server(gateway, security, hand_over, host, port)
