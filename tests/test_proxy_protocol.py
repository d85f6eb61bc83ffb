"""The PROXY protocol header reader, fed bytes without sockets."""

from __future__ import annotations

import importlib.util
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SCALE
from hypothesis import given
from hypothesis import strategies as st

from tether.gateway.proxy_protocol import (
    MAX_V1_BYTES,
    MAX_V2_BYTES,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderReader,
    encode_v1,
    encode_v2,
)

# What follows a header on the wire: a TLS ClientHello or a tether frame. The reader must not
# take any of it.
AFTER = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(64))


def read_as_needed(data: bytes) -> tuple[ProxyHeaderReader, int]:
    """Feed data in reads of `bytes_needed()` bytes; return the reader and the bytes it took."""
    reader = ProxyHeaderReader()
    used = 0
    while reader.bytes_needed() and used < len(data):
        chunk = data[used : used + reader.bytes_needed()]
        reader.feed(chunk)
        used += len(chunk)
    return reader, used


def read_one_byte_at_a_time(data: bytes) -> tuple[ProxyHeaderReader, int]:
    reader = ProxyHeaderReader()
    used = 0
    while reader.bytes_needed() and used < len(data):
        reader.feed(data[used : used + 1])
        used += 1
    return reader, used


READERS = [read_as_needed, read_one_byte_at_a_time]


@pytest.mark.parametrize("read", READERS)
def test_v1_tcp4(read: object) -> None:
    header = b"PROXY TCP4 203.0.113.7 198.51.100.1 51234 443\r\n"
    reader, used = read(header + AFTER)  # type: ignore[operator]
    assert reader.error is None
    assert reader.header == ProxyHeader(
        version=1,
        length=len(header),
        source=("203.0.113.7", 51234),
        destination=("198.51.100.1", 443),
    )
    assert used == len(header)
    assert reader.bytes_needed() == 0


@pytest.mark.parametrize("read", READERS)
def test_v1_tcp6_canonical_form(read: object) -> None:
    header = b"PROXY TCP6 2001:0db8:0:0:0:0:0:1 ::1 65535 0\r\n"
    reader, used = read(header + AFTER)  # type: ignore[operator]
    assert reader.header is not None
    assert reader.header.source == ("2001:db8::1", 65535)
    assert reader.header.destination == ("::1", 0)
    assert used == len(header)


@pytest.mark.parametrize("read", READERS)
def test_v1_unknown_keeps_peer(read: object) -> None:
    for header in (b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ignored rest of the line\r\n"):
        reader, used = read(header + AFTER)  # type: ignore[operator]
        assert reader.error is None
        assert reader.header is not None
        assert reader.header.source is None
        assert used == len(header)


def test_v1_longest_tcp6_header_accepted() -> None:
    source = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"
    destination = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    header = f"PROXY TCP6 {source} {destination} 65535 65535\r\n".encode()
    reader, used = read_as_needed(header + AFTER)
    assert reader.header is not None
    assert used == len(header)


def test_v1_header_of_limit_length_accepted() -> None:
    header = b"PROXY UNKNOWN " + b"x" * (MAX_V1_BYTES - 16) + b"\r\n"
    assert len(header) == MAX_V1_BYTES
    reader, used = read_as_needed(header + AFTER)
    assert reader.header is not None
    assert used == MAX_V1_BYTES


def test_v1_without_crlf_stops_at_limit() -> None:
    endless = b"PROXY UNKNOWN " + b"x" * 500
    reader, used = read_as_needed(endless)
    assert reader.error is not None
    assert "CRLF" in reader.error
    assert used <= MAX_V1_BYTES


def test_v1_cr_past_limit_rejected() -> None:
    line = b"PROXY UNKNOWN " + b"x" * (MAX_V1_BYTES - 15) + b"\r\n"
    assert len(line) == MAX_V1_BYTES + 1
    reader, _ = read_one_byte_at_a_time(line)
    assert reader.error is not None
    assert reader.header is None


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"PROXY TCP4 300.1.1.1 10.0.0.1 1 2\r\n", "300.1.1.1"),
        (b"PROXY TCP4 10.0.0.01 10.0.0.1 1 2\r\n", "10.0.0.01"),
        (b"PROXY TCP4 ::1 ::1 1 2\r\n", "IPv4"),
        (b"PROXY TCP6 10.0.0.1 10.0.0.2 1 2\r\n", "IPv6"),
        (b"PROXY TCP4 10.0.0.1 10.0.0.2 65536 2\r\n", "port"),
        (b"PROXY TCP4 10.0.0.1 10.0.0.2 -1 2\r\n", "port"),
        (b"PROXY TCP4 10.0.0.1 10.0.0.2 1\r\n", "fields"),
        (b"PROXY TCP4 10.0.0.1  10.0.0.2 1 2\r\n", "fields"),
        (b"PROXY UDP4 10.0.0.1 10.0.0.2 1 2\r\n", "UDP4"),
        (b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\rX", "not followed by LF"),
        (b"PROXY N\r\n", "'N' is not TCP4"),
        (b"PROXY TCP4 10.0.0.\xff 10.0.0.2 1 2\r\n", "ASCII"),
        # A scope id would let the header put any text, a line feed too, into the client
        # address that logs and per-address limits use.
        (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "scope"),
        (b"PROXY TCP6 ::1%\nforged ::1 1 2\r\n", "scope"),
    ],
)
def test_v1_malformed(line: bytes, expected: str) -> None:
    reader, _ = read_as_needed(line + AFTER)
    assert reader.header is None
    assert reader.error is not None
    assert expected in reader.error


@pytest.mark.parametrize("read", READERS)
def test_v2_inet(read: object) -> None:
    header = encode_v2(("203.0.113.9", 40000), ("198.51.100.1", 7400))
    reader, used = read(header + AFTER)  # type: ignore[operator]
    assert reader.header == ProxyHeader(
        version=2,
        length=len(header),
        source=("203.0.113.9", 40000),
        destination=("198.51.100.1", 7400),
    )
    assert used == len(header)


@pytest.mark.parametrize("read", READERS)
def test_v2_inet6_with_tlvs(read: object) -> None:
    tlvs = b"\x04\x00\x05hello" + b"\xea\x00\x03abc"  # a NOOP and an AWS endpoint id TLV
    header = encode_v2(("2001:db8::7", 1), ("2001:db8::1", 2), tlvs)
    reader, used = read(header + AFTER)  # type: ignore[operator]
    assert reader.header is not None
    assert reader.header.source == ("2001:db8::7", 1)
    assert used == len(header)


def test_v2_local_keeps_peer() -> None:
    header = encode_v2(None, None)
    reader, used = read_as_needed(header + AFTER)
    assert reader.header is not None
    assert reader.header.source is None
    assert used == len(header) == 16


def test_v2_local_ignores_addresses() -> None:
    block = bytes(12)
    header = V2_SIGNATURE + bytes([0x20, 0x11]) + struct.pack(">H", len(block)) + block
    reader, _ = read_as_needed(header)
    assert reader.header is not None
    assert reader.header.source is None


def test_v2_unspec_family_keeps_peer() -> None:
    header = V2_SIGNATURE + bytes([0x21, 0x00]) + struct.pack(">H", 0)
    reader, _ = read_as_needed(header + AFTER)
    assert reader.header is not None
    assert reader.header.source is None


def test_v2_unix_family_keeps_peer() -> None:
    block = b"/tmp/a".ljust(108, b"\0") + b"/tmp/b".ljust(108, b"\0")
    header = V2_SIGNATURE + bytes([0x21, 0x31]) + struct.pack(">H", len(block)) + block
    reader, used = read_as_needed(header + AFTER)
    assert reader.header is not None
    assert reader.header.source is None
    assert used == len(header)


def _v2(command: int, family: int, block: bytes, length: int | None = None) -> bytes:
    """Return a version 2 header from its version-command and family-transport bytes."""
    size = len(block) if length is None else length
    return V2_SIGNATURE + bytes([command, family]) + struct.pack(">H", size) + block


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (_v2(0x11, 0x11, bytes(12)), "version 1"),
        (_v2(0x22, 0x11, bytes(12)), "command"),
        (_v2(0x21, 0x41, bytes(12)), "family"),
        (_v2(0x21, 0x12, bytes(12)), "not a stream"),
        (_v2(0x21, 0x11, bytes(11)), "shorter"),
        (_v2(0x21, 0x21, bytes(12)), "shorter"),
        (_v2(0x21, 0x11, b"", length=MAX_V2_BYTES), "limit"),
        (_v2(0x21, 0x11, b"", length=65535), "limit"),
    ],
)
def test_v2_malformed(header: bytes, expected: str) -> None:
    reader, used = read_as_needed(header + AFTER)
    assert reader.header is None
    assert reader.error is not None
    assert expected in reader.error
    assert used <= 16 + 36  # rejected from its fixed part or its address block


@pytest.mark.parametrize(
    "start",
    [
        b"\x16\x03\x01\x02\x00",  # a TLS ClientHello
        b"GET /ws HTTP/1.1\r\n",  # a WebSocket upgrade
        b"\x0a\x08\x08\x01",  # a tether frame
        b"proxy TCP4 ",  # lower case is not the signature
        b"\r\n\r\n\x00\r\nQUIT\r",  # a near miss of the version 2 signature
    ],
)
def test_other_protocols_rejected_early(start: bytes) -> None:
    reader, _ = read_one_byte_at_a_time(start + AFTER)
    assert reader.error is not None
    assert "did not start with a PROXY" in reader.error


def test_feed_beyond_needed_raises() -> None:
    reader = ProxyHeaderReader()
    with pytest.raises(ValueError, match="needed"):
        reader.feed(b"PROXY UNKNOWN\r\nX")


def test_feed_after_done_raises() -> None:
    reader, _ = read_as_needed(b"PROXY UNKNOWN\r\n")
    with pytest.raises(RuntimeError):
        reader.feed(b"x")


def test_encode_v1_round_trip() -> None:
    header = encode_v1(("192.0.2.1", 5), ("192.0.2.2", 6))
    assert header == b"PROXY TCP4 192.0.2.1 192.0.2.2 5 6\r\n"


ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
ports = st.integers(0, 65535)


@given(
    st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6)),
    ports,
    ports,
    st.sampled_from([1, 2]),
    st.binary(max_size=64),
)
def test_valid_headers_read_exactly(
    addresses: tuple[str, str], source_port: int, destination_port: int, version: int, after: bytes
) -> None:
    source = (addresses[0], source_port)
    destination = (addresses[1], destination_port)
    header = encode_v1(source, destination) if version == 1 else encode_v2(source, destination)
    reader, used = read_as_needed(header + after)
    assert reader.error is None
    assert reader.header is not None
    assert reader.header.source == source
    assert reader.header.destination == destination
    assert used == len(header)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    reader, used = read_as_needed(data)
    assert used <= max(MAX_V1_BYTES, MAX_V2_BYTES)
    if reader.bytes_needed() == 0:
        assert (reader.header is None) != (reader.error is None)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_after_v1_prefix(data: bytes) -> None:
    reader, used = read_one_byte_at_a_time(b"PROXY " + data)
    assert used <= MAX_V1_BYTES
    if reader.header is not None:
        assert reader.header.length == used


FUZZ_SECONDS = 5  # libFuzzer's -max_total_time, after which the harness stops by itself
HARNESS = Path(__file__).resolve().parent.parent / "fuzz" / "fuzz_proxy_header.py"


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris not installed")
def test_fuzz_harness_short_run(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"  # empty: the harness seeds it
    corpus.mkdir()
    result = subprocess.run(
        [
            sys.executable,
            str(HARNESS),
            f"-max_total_time={FUZZ_SECONDS}",
            f"-artifact_prefix={tmp_path}/",
            "-print_final_stats=1",
            str(corpus),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=8 * FUZZ_SECONDS * SCALE,
        check=False,
    )
    crashes = {path.name: path.read_bytes().hex() for path in tmp_path.glob("crash-*")}
    assert result.returncode == 0, f"{result.stderr[-3000:]}\n{crashes}"
    assert not crashes
    executed = re.search(r"stat::number_of_executed_units:\s*(\d+)", result.stderr)
    assert executed is not None, result.stderr[-3000:]
    assert int(executed.group(1)) > 100
