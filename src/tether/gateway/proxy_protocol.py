"""Reader of the PROXY protocol header, versions 1 and 2, sans-I/O.

A load balancer that speaks the PROXY protocol (HAProxy's specification, "The PROXY protocol,
versions 1 & 2") sends one header before the client's first byte. The header carries the
client's address, so the gateway can count per-address limits against the real client instead
of the balancer.

- Version 1 is one ASCII line, `PROXY TCP4|TCP6|UNKNOWN <src> <dst> <sport> <dport>` and CRLF,
  at most 107 bytes including the CRLF.
- Version 2 is binary: a 12-byte signature, a version and command byte, a family and transport
  byte, a 16-bit big-endian length, then the addresses and optional TLVs.

`ProxyHeaderReader.bytes_needed()` returns how many bytes to read next without reading past the
end of the header. The bytes after the header belong to the next layer, which may be a TLS
handshake that asyncio cannot be given bytes already read, so reading exactly the header is
what lets TLS follow a PROXY header. Bad input sets `error`; nothing here raises for it.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

__all__ = [
    "MAX_V1_BYTES",
    "MAX_V2_BYTES",
    "V2_SIGNATURE",
    "ProxyHeader",
    "ProxyHeaderReader",
    "encode_v1",
    "encode_v2",
]

V1_PREFIX = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
MAX_V1_BYTES = 107
"""Maximum length of a version 1 header, CRLF included, as the specification fixes it."""
MAX_V2_BYTES = 4096
"""Maximum length of a version 2 header accepted here, TLVs included. The specification allows up to
16 + 65,535 bytes; addresses take at most 216 of them, and the TLVs that load balancers add
(connection ids, endpoint ids, TLS details) fit well within this bound."""

# The shortest possible header of either version: "PROXY UNKNOWN\r\n" has 15 bytes, and the
# fixed part of a version 2 header has 16. Reading 15 bytes first never reads past a header.
_FIRST_READ = 15
_V2_FIXED = 16
_V2_COMMAND_LOCAL = 0x0
_V2_COMMAND_PROXY = 0x1
_V2_FAMILY_UNSPEC = 0x0
_V2_FAMILY_INET = 0x1
_V2_FAMILY_INET6 = 0x2
_V2_FAMILY_UNIX = 0x3
_V2_TRANSPORT_UNSPEC = 0x0
_V2_TRANSPORT_STREAM = 0x1
# Bytes of the address block per family: two addresses and, for INET and INET6, two ports.
_V2_ADDRESS_BYTES = {
    _V2_FAMILY_UNSPEC: 0,
    _V2_FAMILY_INET: 12,
    _V2_FAMILY_INET6: 36,
    _V2_FAMILY_UNIX: 216,
}

Address = tuple[str, int]
"""An IP address in its canonical text form and a port."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A complete, valid PROXY header."""

    version: int
    """1 or 2."""
    length: int
    """Bytes of the header, so of the input it consumed."""
    source: Address | None
    """The client's address and port; None when the header carries none (version 1 UNKNOWN,
    version 2 LOCAL, or a family other than IPv4 and IPv6), so the connection's own peer
    address applies."""
    destination: Address | None
    """The address and port the client connected to; None when `source` is None."""


class ProxyHeaderReader:
    """Incremental reader of one PROXY header.

    Feed it at most `bytes_needed()` bytes at a time. Once `header` or `error` is set, the reader is
    done and takes no more input.
    """

    __slots__ = ("_data", "error", "header")

    def __init__(self) -> None:
        self._data = bytearray()
        self.header: ProxyHeader | None = None
        """The header, once complete and valid."""
        self.error: str | None = None
        """Why the input is not a valid header, once it is known."""

    def bytes_needed(self) -> int:
        """Return how many bytes to read next: at least 1 until done, 0 when done.

        Reading this many bytes never reads past the end of the header.
        """
        if self.header is not None or self.error is not None:
            return 0
        data = self._data
        if len(data) < _FIRST_READ:
            return _FIRST_READ - len(data)
        if data.startswith(V1_PREFIX):
            # The line ends in CRLF: after a CR exactly one byte is missing, otherwise two or
            # more. This costs several small reads for a version 1 header, once per connection.
            return 1 if data[-1] == 0x0D else 2
        if len(data) < _V2_FIXED:
            return _V2_FIXED - len(data)
        length: int = struct.unpack_from(">H", data, 14)[0]
        return _V2_FIXED + length - len(data)

    def feed(self, data: bytes) -> None:
        """Add bytes read from the connection and parse what has arrived."""
        if self.header is not None or self.error is not None:
            raise RuntimeError("the PROXY header is complete; no more input belongs to it")
        if len(data) > self.bytes_needed():
            raise ValueError(f"fed {len(data)} bytes, but only {self.bytes_needed()} are needed")
        self._data += data
        buffered = self._data

        if not _could_start_header(buffered):
            self.error = "the connection did not start with a PROXY protocol header"
            return
        if buffered.startswith(V1_PREFIX):
            self._parse_v1(buffered)
        elif len(buffered) >= _V2_FIXED:
            self._parse_v2(buffered)

    def _parse_v1(self, data: bytearray) -> None:
        end = data.find(b"\r")
        # The CR can be at index MAX_V1_BYTES - 2 at the latest.
        if end + 2 > MAX_V1_BYTES or (end == -1 and len(data) >= MAX_V1_BYTES - 1):
            self.error = f"version 1 header without CRLF in its first {MAX_V1_BYTES} bytes"
            return
        if end == -1:
            return
        if end + 1 == len(data):
            return  # the LF is yet to come
        if data[end + 1] != 0x0A:
            self.error = "version 1 header has a CR that is not followed by LF"
            return
        addresses = _parse_v1_line(bytes(data[:end]))
        if isinstance(addresses, str):
            self.error = addresses
            return
        if end + 2 != len(data):
            # Bytes after the CRLF were read only if the line is shorter than the first read,
            # and no valid line is. Kept as a check because the header must end the input.
            self.error = "version 1 header is followed by bytes read with it"
            return
        self._finish(1, len(data), *addresses)

    def _parse_v2(self, data: bytearray) -> None:
        version, command = data[12] >> 4, data[12] & 0x0F
        family, transport = data[13] >> 4, data[13] & 0x0F
        (length,) = struct.unpack_from(">H", data, 14)
        if version != 2:
            self.error = f"version 2 signature with version {version}"
            return
        if command not in (_V2_COMMAND_LOCAL, _V2_COMMAND_PROXY):
            self.error = f"unknown version 2 command {command:#x}"
            return
        if family not in _V2_ADDRESS_BYTES:
            self.error = f"unknown version 2 address family {family:#x}"
            return
        if _V2_FIXED + length > MAX_V2_BYTES:
            self.error = (
                f"version 2 header of {_V2_FIXED + length} bytes; the limit is {MAX_V2_BYTES}"
            )
            return
        if command == _V2_COMMAND_PROXY and length < _V2_ADDRESS_BYTES[family]:
            self.error = (
                f"version 2 length {length} is shorter than the {_V2_ADDRESS_BYTES[family]} "
                f"address bytes of family {family:#x}"
            )
            return
        if len(data) < _V2_FIXED + length:
            return  # addresses and TLVs are yet to come

        source = destination = None
        # A LOCAL header comes from the balancer itself, such as a health check: its addresses,
        # if any, are ignored and the connection's own applies (specification, section 2.2).
        if command == _V2_COMMAND_PROXY and family in (_V2_FAMILY_INET, _V2_FAMILY_INET6):
            if transport not in (_V2_TRANSPORT_UNSPEC, _V2_TRANSPORT_STREAM):
                self.error = f"version 2 transport {transport:#x} is not a stream"
                return
            source, destination = _v2_addresses(bytes(data[_V2_FIXED:]), family)
        self._finish(2, len(data), source, destination)

    def _finish(
        self, version: int, length: int, source: Address | None, destination: Address | None
    ) -> None:
        self.header = ProxyHeader(
            version=version, length=length, source=source, destination=destination
        )
        self._data = bytearray()


def _could_start_header(data: bytearray) -> bool:
    """Tell whether data is, so far, the start of a version 1 or version 2 header."""
    v1 = min(len(data), len(V1_PREFIX))
    v2 = min(len(data), len(V2_SIGNATURE))
    return data[:v1] == V1_PREFIX[:v1] or data[:v2] == V2_SIGNATURE[:v2]


def _parse_v1_line(line: bytes) -> tuple[Address | None, Address | None] | str:
    """Return (source, destination) of a version 1 line without its CRLF, or the error."""
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        return "version 1 header is not ASCII"
    fields = text.split(" ")
    protocol = fields[1] if len(fields) > 1 else ""
    if protocol == "UNKNOWN":
        return None, None  # the rest of the line is to be ignored (specification, 2.1)
    if protocol not in ("TCP4", "TCP6"):
        return f"version 1 protocol {protocol[:8]!r} is not TCP4, TCP6 or UNKNOWN"
    if len(fields) != 6:
        return f"version 1 header has {len(fields)} fields; TCP4 and TCP6 need 6"
    version = 4 if protocol == "TCP4" else 6
    try:
        source_ip = _ip_of_version(fields[2], version)
        destination_ip = _ip_of_version(fields[3], version)
        source_port = _port(fields[4])
        destination_port = _port(fields[5])
    except ValueError as error:
        return f"version 1 header: {error}"
    return (source_ip, source_port), (destination_ip, destination_port)


def _ip_of_version(text: str, version: int) -> str:
    if "%" in text:
        # Python accepts any text after % as an IPv6 scope id, a line feed too, and the
        # address goes into logs and per-address limits. The specification has no scope ids.
        raise ValueError(f"{text[:40]!r} has a scope id")
    address = ipaddress.ip_address(text)  # rejects IPv4 with leading zeros, too
    if address.version != version:
        raise ValueError(f"{text!r} is not an IPv{version} address")
    return str(address)


def _port(text: str) -> int:
    if not (text.isdigit() and text.isascii() and len(text) <= 5) or int(text) > 65535:
        raise ValueError(f"{text[:8]!r} is not a port number")
    return int(text)


def _v2_addresses(block: bytes, family: int) -> tuple[Address, Address]:
    """Return (source, destination) from the address block of an INET or INET6 header."""
    size = 4 if family == _V2_FAMILY_INET else 16
    source_ip = ipaddress.ip_address(block[:size])
    destination_ip = ipaddress.ip_address(block[size : 2 * size])
    source_port, destination_port = struct.unpack_from(">HH", block, 2 * size)
    return (str(source_ip), source_port), (str(destination_ip), destination_port)


def encode_v1(source: Address, destination: Address) -> bytes:
    """Return the version 1 header for a TCP connection from source to destination.

    Load balancers write these headers; tether writes them only in tests and tools.
    """
    version = ipaddress.ip_address(source[0]).version
    return (
        f"PROXY TCP{version} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n"
    ).encode("ascii")


def encode_v2(source: Address | None, destination: Address | None, tlvs: bytes = b"") -> bytes:
    """Return the version 2 header for a TCP connection; LOCAL when source is None."""
    if source is None or destination is None:
        return V2_SIGNATURE + bytes([0x20, 0x00]) + struct.pack(">H", len(tlvs)) + tlvs
    source_ip = ipaddress.ip_address(source[0])
    destination_ip = ipaddress.ip_address(destination[0])
    family = _V2_FAMILY_INET if source_ip.version == 4 else _V2_FAMILY_INET6
    block = (
        source_ip.packed
        + destination_ip.packed
        + struct.pack(">HH", source[1], destination[1])
        + tlvs
    )
    header = bytes([0x20 | _V2_COMMAND_PROXY, family << 4 | _V2_TRANSPORT_STREAM])
    return V2_SIGNATURE + header + struct.pack(">H", len(block)) + block
