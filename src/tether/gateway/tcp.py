"""TCP transport of the gateway: an asyncio server whose protocol objects are the connections."""

from __future__ import annotations

import asyncio

from tether.gateway.connection import TcpConnection
from tether.gateway.gateway import Gateway

__all__ = ["start_tcp_server"]


async def start_tcp_server(gateway: Gateway, host: str, port: int) -> asyncio.Server:
    """Listen for TCP clients on host:port."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: TcpConnection(gateway, gateway.new_connection_id()),
        host,
        port,
        reuse_address=True,
    )
