"""Tests of the table of error and disconnect codes."""

from __future__ import annotations

import pytest

from tether.protocol.codes import Code, CodeInfo, describe, is_final, table

REQUEST_CODES = [code for code in Code if code < 4000]
RETRY_CODES = [code for code in Code if 4000 <= code < 4500]
FINAL_CODES = [code for code in Code if 4500 <= code < 5000]


@pytest.mark.parametrize("code", list(Code))
def test_every_code_has_entry(code: Code) -> None:
    info = describe(code)

    assert isinstance(info, CodeInfo)
    assert info.code is code


@pytest.mark.parametrize("code", list(Code))
def test_every_code_has_meaning(code: Code) -> None:
    meaning = describe(code).meaning

    assert meaning
    assert meaning[0].isupper()
    assert meaning.endswith(".")


@pytest.mark.parametrize("code", list(Code))
def test_code_in_known_range(code: Code) -> None:
    # RFC 6455, section 7.4.2, reserves WebSocket close codes 4000-4999 for private use, and
    # codes below 4000 travel only in Error frames.
    assert 1 <= code < 5000


def test_each_range_is_used() -> None:
    assert REQUEST_CODES
    assert RETRY_CODES
    assert FINAL_CODES


@pytest.mark.parametrize("code", RETRY_CODES)
def test_reconnect_range_retries(code: Code) -> None:
    assert describe(code).retry is True
    assert is_final(code) is False


@pytest.mark.parametrize("code", FINAL_CODES)
def test_final_range_is_final(code: Code) -> None:
    assert describe(code).retry is False
    assert is_final(code) is True


@pytest.mark.parametrize("code", REQUEST_CODES)
def test_request_code_final_matches_retry(code: Code) -> None:
    assert is_final(code) is not describe(code).retry


@pytest.mark.parametrize("code", [Code.UNAVAILABLE, Code.INTERNAL])
def test_transient_request_errors_retry(code: Code) -> None:
    assert is_final(code) is False


@pytest.mark.parametrize(
    "code",
    [
        Code.BAD_REQUEST,
        Code.NOT_A_CONTACT,
        Code.NOT_FOUND,
        Code.NOT_ALLOWED,
        Code.ALREADY_EXISTS,
        Code.LIMIT_REACHED,
    ],
)
def test_invalid_request_errors_final(code: Code) -> None:
    assert is_final(code) is True


@pytest.mark.parametrize("value", [0, -1, 99, 999, 3999, 4999, 5000, 65535])
def test_unknown_code_is_final(value: int) -> None:
    assert is_final(value) is True


@pytest.mark.parametrize("value", [4099, 4499])
def test_unknown_reconnect_range_retries(value: int) -> None:
    assert is_final(value) is False


@pytest.mark.parametrize("value", [0, -1, 99, 4099, 4999, 65535])
def test_describe_unknown_raises(value: int) -> None:
    with pytest.raises(ValueError, match=str(value)):
        describe(value)


def test_describe_accepts_plain_int() -> None:
    assert describe(4500).code is Code.PROTOCOL_ERROR


def test_table_lists_every_code_in_order() -> None:
    codes = [info.code for info in table()]

    assert codes == sorted(Code)


def test_code_values_unique() -> None:
    # IntEnum turns a repeated value into an alias, which would hide a code from iteration.
    assert len(Code.__members__) == len(list(Code))
