"""Atheris harness for the PROXY protocol header reader (`tether.gateway.proxy_protocol`).

Usage: python fuzz/fuzz_proxy_header.py [libFuzzer flags] [CORPUS_DIR ... | INPUT_FILE ...]
An empty corpus directory is first filled with seed inputs: valid version 1 and 2 headers.

The contract checked on every input: the reader never raises, never requests more than the
header's limit, and reports a header or an error once it needs no more bytes. Reading in
`bytes_needed()` steps, one byte at a time and in the chunks between cut offsets gives the same
result, though an error may be found after different numbers of bytes. A header's length
equals the bytes it took, and its addresses survive a round trip through the encoders. Any
exception, including a failed assert, is a crash that libFuzzer saves as an input file.

Layout of a fuzzer input:

    byte 0          number of cut offsets: byte % 8
    1 byte each     cut offsets, each a chunk size of 1 + byte
    rest            the bytes a connection starts with
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["tether"]):
    from tether.gateway.proxy_protocol import (
        MAX_V1_BYTES,
        MAX_V2_BYTES,
        ProxyHeader,
        ProxyHeaderReader,
        encode_v1,
        encode_v2,
    )

Result = tuple[ProxyHeader | None, str | None, int]


def read(data: bytes, chunk_sizes: list[int]) -> Result:
    """Feed data in chunks of the given sizes, cycling, each cut to what the reader needs."""
    reader = ProxyHeaderReader()
    used = 0
    step = 0
    while reader.bytes_needed() and used < len(data):
        size = min(chunk_sizes[step % len(chunk_sizes)], reader.bytes_needed())
        reader.feed(data[used : used + size])
        used += size
        step += 1
    assert used <= max(MAX_V1_BYTES, MAX_V2_BYTES), f"read {used} bytes"
    if reader.bytes_needed() == 0:
        assert (reader.header is None) != (reader.error is None), "done without one result"
    return reader.header, reader.error, used


def read_as_needed(data: bytes) -> Result:
    """Feed data in reads of exactly `bytes_needed()` bytes, as the gateway does."""
    reader = ProxyHeaderReader()
    used = 0
    while reader.bytes_needed() and used < len(data):
        chunk = data[used : used + reader.bytes_needed()]
        reader.feed(chunk)
        used += len(chunk)
    return reader.header, reader.error, used


def check_round_trip(header: ProxyHeader) -> None:
    """Encode the header's addresses again and check they read back the same."""
    if header.source is None or header.destination is None:
        return
    for encode in (encode_v1, encode_v2):
        encoded = encode(header.source, header.destination)
        parsed = read_as_needed(encoded)[0]
        assert parsed is not None, f"re-encoded header did not parse: {encoded!r}"
        assert parsed.source == header.source
        assert parsed.destination == header.destination


def test_one_input(data: bytes) -> None:
    count = data[0] % 8 if data else 0
    chunk_sizes = [1 + byte for byte in data[1 : 1 + count]] or [1]
    body = data[1 + count :]

    needed = read_as_needed(body)
    single = read(body, [1])
    chunked = read(body, chunk_sizes)
    # An error may be found after different numbers of bytes, so only results are compared.
    results = [result[:2] for result in (needed, single, chunked)]
    assert results[0] == results[1] == results[2], f"results differ: {results}"

    header, _, used = needed
    if header is not None:
        assert header.length == used == single[2] == chunked[2]
        check_round_trip(header)


SEEDS = [
    b"\x00PROXY TCP4 203.0.113.7 198.51.100.1 51234 443\r\n",
    b"\x00PROXY TCP6 2001:db8::1 ::1 1 2\r\n\x16\x03\x01",
    b"\x00PROXY UNKNOWN\r\n",
    b"\x01\x04" + encode_v2(("203.0.113.9", 40000), ("198.51.100.1", 7400)),
    b"\x00" + encode_v2(("2001:db8::7", 1), ("2001:db8::1", 2), b"\x04\x00\x01x"),
    b"\x00" + encode_v2(None, None),
]


def main() -> None:
    for argument in sys.argv[1:]:
        path = Path(argument)
        if path.is_dir() and not any(path.iterdir()):
            for index, seed in enumerate(SEEDS):
                (path / f"seed-{index}").write_bytes(seed)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
