"""Keep docs/protocol.md in step with the protocol code.

The code table of the document must list exactly the entries of `tether.protocol.codes.table()`,
and its worked framing example must be the bytes the framing code produces.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tether.protocol import tether_pb2 as pb
from tether.protocol.codes import CodeInfo, table
from tether.protocol.framing import prefix_frame
from tether.protocol.json_frames import frame_to_json

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"
TABLE_HEADING = "### 6.1 Code table"
TABLE_HEADER = ["code", "name", "retry or final", "meaning"]


def expected_marking(info: CodeInfo) -> str:
    """Return the marking the document uses for a code: retry, reconnect or final."""
    if not info.retry:
        return "final"
    return "retry" if info.code < 4000 else "reconnect"


def split_row(line: str) -> list[str]:
    """Split one Markdown table row into its stripped cells."""
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def read_code_rows() -> list[list[str]]:
    """Return the data rows of the first table after the code-table heading."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    assert TABLE_HEADING in lines, f"{DOC} has no line {TABLE_HEADING!r}"
    start = lines.index(TABLE_HEADING) + 1

    while start < len(lines) and not lines[start].startswith("|"):
        start += 1
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    rows = [split_row(line) for line in lines[start:end]]

    assert len(rows) >= 2, f"no table found after {TABLE_HEADING!r}"
    assert rows[0] == TABLE_HEADER
    assert all(re.fullmatch(r":?-+:?", cell) for cell in rows[1])
    return rows[2:]


def parse_code_table() -> dict[int, tuple[str, str, str]]:
    """Return code -> (name, marking, meaning) as the document lists them."""
    entries: dict[int, tuple[str, str, str]] = {}
    for row in read_code_rows():
        assert len(row) == len(TABLE_HEADER), f"row has {len(row)} cells: {row}"
        code_cell, name_cell, marking, meaning = row
        code = int(code_cell)
        assert code not in entries, f"code {code} is listed twice"
        entries[code] = (name_cell.strip("`"), marking, meaning)
    return entries


DOC_CODES = parse_code_table()
CODE_ENTRIES = table()


def test_doc_lists_exactly_the_codes() -> None:
    assert sorted(DOC_CODES) == [int(info.code) for info in CODE_ENTRIES]


def test_doc_rows_in_numeric_order() -> None:
    assert list(DOC_CODES) == sorted(DOC_CODES)


@pytest.mark.parametrize("info", CODE_ENTRIES, ids=lambda info: info.code.name)
def test_doc_code_name(info: CodeInfo) -> None:
    assert DOC_CODES[int(info.code)][0] == info.code.name


@pytest.mark.parametrize("info", CODE_ENTRIES, ids=lambda info: info.code.name)
def test_doc_code_marking(info: CodeInfo) -> None:
    assert DOC_CODES[int(info.code)][1] == expected_marking(info)


@pytest.mark.parametrize("info", CODE_ENTRIES, ids=lambda info: info.code.name)
def test_doc_code_meaning(info: CodeInfo) -> None:
    assert DOC_CODES[int(info.code)][2] == info.meaning


def test_doc_heartbeat_example_bytes() -> None:
    payload = pb.Frame(heartbeat=pb.Heartbeat(nonce=300)).SerializeToString()
    text = " ".join(DOC.read_text(encoding="utf-8").split())

    assert f"TCP bytes are `{prefix_frame(payload).hex(' ')}`" in text
    assert f"binary message `{payload.hex(' ')}`" in text


def test_doc_heartbeat_ack_example_bytes() -> None:
    ack = pb.HeartbeatAck(nonce=300, server_time_ms=1_767_225_600_000)
    payload = pb.Frame(heartbeat_ack=ack).SerializeToString()
    text = " ".join(DOC.read_text(encoding="utf-8").split())

    assert f"`{prefix_frame(payload).hex(' ')}` on TCP" in text


def test_doc_json_heartbeat_example() -> None:
    heartbeat = pb.Frame(heartbeat=pb.Heartbeat(nonce=300))
    ack = pb.Frame(heartbeat_ack=pb.HeartbeatAck(nonce=300, server_time_ms=1_767_225_600_000))
    text = DOC.read_text(encoding="utf-8")

    assert f"client → server   {frame_to_json(heartbeat).decode()}\n" in text
    assert f"server → client   {frame_to_json(ack).decode()}\n" in text
    empty_ack = frame_to_json(pb.Frame(heartbeat_ack=pb.HeartbeatAck(server_time_ms=1)))
    assert empty_ack == b'{"heartbeatAck":{"serverTimeMs":"1"}}'  # the defaults row's claim
