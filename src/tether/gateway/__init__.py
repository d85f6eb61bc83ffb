"""The gateway: TCP and WebSocket servers, sessions, heartbeats and local fan-out."""

from tether.gateway.config import GatewayConfig
from tether.gateway.gateway import Gateway
from tether.gateway.security import TransportSecurity, TransportSecurityConfig
from tether.gateway.tcp import start_tcp_server
from tether.gateway.websocket import SUBPROTOCOL, start_websocket_server

__all__ = [
    "SUBPROTOCOL",
    "Gateway",
    "GatewayConfig",
    "TransportSecurity",
    "TransportSecurityConfig",
    "start_tcp_server",
    "start_websocket_server",
]
