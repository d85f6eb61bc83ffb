"""The reference business logic: users, contacts and direct messages on SQLite."""

from tether.logic.service import LogicConfig, LogicService, default_database
from tether.logic.store import Store, StoredMessage, StoreError, conversation_id

__all__ = [
    "LogicConfig",
    "LogicService",
    "Store",
    "StoreError",
    "StoredMessage",
    "conversation_id",
    "default_database",
]
