"""The SQLite store of the reference logic, without a server."""

from __future__ import annotations

from pathlib import Path

import pytest

from tether.logic.store import Store, StoredMessage, conversation_id


@pytest.fixture
def store(tmp_path: Path) -> Store:
    opened = Store(tmp_path / "tether.db")
    opened.add_contacts("alice", "bob")
    return opened


def send(
    store: Store, sender: str, recipient: str, client_id: str, body: bytes = b"x"
) -> StoredMessage:
    return store.store_direct(
        sender=sender,
        sender_device="d",
        recipient=recipient,
        client_message_id=client_id,
        body=body,
    )


def test_conversation_id_ignores_order() -> None:
    assert conversation_id("bob", "alice") == conversation_id("alice", "bob") == "d:alice:bob"


def test_contacts_are_mutual(store: Store) -> None:
    assert store.contacts("alice") == ["bob"]
    assert store.contacts("bob") == ["alice"]
    assert store.are_contacts("bob", "alice")


def test_add_contacts_twice_reports_no_change(store: Store) -> None:
    assert store.add_contacts("bob", "alice") is False


def test_own_contact_rejected(store: Store) -> None:
    with pytest.raises(ValueError):
        store.add_contacts("alice", "alice")


def test_remove_contacts_both_ways(store: Store) -> None:
    assert store.remove_contacts("bob", "alice") is True
    assert store.contacts("alice") == []
    assert store.remove_contacts("bob", "alice") is False


def test_sequence_grows_per_conversation(store: Store) -> None:
    store.add_contacts("alice", "carol")
    first = send(store, "alice", "bob", "1")
    second = send(store, "bob", "alice", "2")
    other = send(store, "alice", "carol", "3")
    assert (first.sequence, second.sequence, other.sequence) == (1, 2, 1)
    assert first.message_id < second.message_id < other.message_id


def test_same_client_id_stored_once(store: Store) -> None:
    first = send(store, "alice", "bob", "same", b"one")
    again = send(store, "alice", "bob", "same", b"two")
    assert first.new is True
    assert again.new is False
    assert again.message_id == first.message_id
    assert again.body == b"one"
    assert len(store.history("d:alice:bob", 0, 10)) == 1


def test_same_client_id_other_sender(store: Store) -> None:
    first = send(store, "alice", "bob", "same")
    other = send(store, "bob", "alice", "same")
    assert other.new is True
    assert other.message_id != first.message_id


def test_history_pages_by_sequence(store: Store) -> None:
    for index in range(5):
        send(store, "alice", "bob", str(index))
    page = store.history("d:alice:bob", 2, 2)
    assert [message.sequence for message in page] == [3, 4]


def test_read_marker_never_moves_back(store: Store) -> None:
    for index in range(5):
        send(store, "alice", "bob", str(index))
    store.mark_read("bob", "phone", "d:alice:bob", 5)
    store.mark_read("bob", "phone", "d:alice:bob", 3)
    assert store.read_marker("bob", "phone", "d:alice:bob") == 5


def test_read_marker_stops_at_last_message(store: Store) -> None:
    send(store, "alice", "bob", "1")
    store.mark_read("bob", "phone", "d:alice:bob", 2**63 + 5)
    assert store.read_marker("bob", "phone", "d:alice:bob") == 1
    store.mark_read("bob", "phone", "d:nobody:zed", 1)
    assert store.read_marker("bob", "phone", "d:nobody:zed") == 0


def test_participant_check(store: Store) -> None:
    send(store, "alice", "bob", "1")
    assert store.is_participant("bob", "d:alice:bob")
    assert not store.is_participant("carol", "d:alice:bob")
    assert not store.is_participant("bob", "d:bob:zed")  # no such conversation
    assert not store.is_participant("bob", "g:bob")


def test_reopen_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "tether.db"
    first = Store(path)
    first.add_contacts("alice", "bob")
    first.close()
    reopened = Store(path)
    assert reopened.contacts("alice") == ["bob"]
