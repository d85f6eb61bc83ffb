"""Settings of one gateway process."""

from __future__ import annotations

from dataclasses import dataclass, field

from tether.gateway.groups import GroupConfig
from tether.gateway.limits import LimitsConfig
from tether.gateway.security import TransportSecurityConfig

__all__ = ["GatewayConfig"]

# Connections the kernel queues before the gateway accepts them; Linux caps it at
# net.core.somaxconn (4096 by default since 5.4). asyncio's default of 100 overflows when a
# killed gateway's thousands of clients return at once, and a dropped SYN or handshake ACK
# costs the client a TCP retransmission timeout of one second or more.
LISTEN_BACKLOG = 4096


@dataclass(frozen=True, kw_only=True, slots=True)
class GatewayConfig:
    """Gateway settings. Times are in seconds, sizes in bytes."""

    host: str = "127.0.0.1"
    """Address the TCP and WebSocket servers bind to (default 127.0.0.1)."""
    tcp_port: int | None = 7400
    """TCP port; 0 picks a free one, None disables TCP (default 7400)."""
    ws_port: int | None = 7401
    """WebSocket port; 0 picks a free one, None disables WebSocket (default 7401)."""
    ws_path: str = "/ws"
    """HTTP path of the WebSocket endpoint (default /ws)."""
    reuse_port: bool = False
    """Listen with SO_REUSEPORT, so several gateway processes of one cluster share the TCP and
    WebSocket ports and the kernel spreads new connections over them (default false)."""
    transport_security: TransportSecurityConfig = field(default_factory=TransportSecurityConfig)
    """TLS, WebSocket Origin checks and proxies that report client addresses (default:
    plaintext, every origin, no proxies)."""
    gateway_id: str = ""
    """Name of this gateway on the bus; empty picks a random one."""
    heartbeat_interval: float = 4.0
    """Seconds between client heartbeats, sent to clients on connect (default 4)."""
    offline_timeout: float = 60.0
    """Seconds without any frame after which a connection is closed (default 60)."""
    connect_timeout: float = 5.0
    """Seconds a new connection has to send its Connect frame (default 5)."""
    request_timeout: float = 5.0
    """Seconds to wait for a reply from the logic layer to a connect or send (default 5)."""
    sweep_interval: float = 1.0
    """Seconds between checks for timed-out connections and requests (default 1)."""
    close_timeout: float = 5.0
    """Seconds a closing connection may take to flush before it is aborted (default 5)."""
    reconnect_spread: float = 2.0
    """Seconds over which clients closed by a shutdown spread their reconnects (default 2)."""
    max_frame_bytes: int = 65_536
    """Largest frame accepted from a client, checked before buffering (default 64 KiB)."""
    max_body_bytes: int = 32_768
    """Largest message body accepted in a Send (default 32 KiB)."""
    max_outgoing_bytes: int = 1_048_576
    """Bytes queued to one client before it is closed as a slow consumer (default 1 MiB)."""
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    """Rate and count limits per connection, address, user and gateway."""
    groups: GroupConfig = field(default_factory=GroupConfig)
    """Online counts of large groups and the pacing of group messages per connection."""

    def __post_init__(self) -> None:
        for name in (
            "heartbeat_interval",
            "offline_timeout",
            "connect_timeout",
            "request_timeout",
            "sweep_interval",
            "close_timeout",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.reconnect_spread < 0:
            raise ValueError(f"reconnect_spread must not be negative, got {self.reconnect_spread}")
        if self.offline_timeout <= self.heartbeat_interval:
            raise ValueError(
                f"offline_timeout ({self.offline_timeout} s) must exceed heartbeat_interval "
                f"({self.heartbeat_interval} s)"
            )
        if self.max_body_bytes >= self.max_frame_bytes:
            raise ValueError(
                f"max_body_bytes ({self.max_body_bytes}) must be below max_frame_bytes "
                f"({self.max_frame_bytes}) to leave room for the other fields"
            )
        if not self.ws_path.startswith("/"):
            raise ValueError(f"ws_path must start with '/', got {self.ws_path!r}")
