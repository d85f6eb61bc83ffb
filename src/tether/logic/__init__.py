"""The reference business logic: users, contacts and direct messages on SQLite or PostgreSQL."""

from tether.logic.service import LogicConfig, LogicService, default_database
from tether.logic.store import (
    Store,
    StoreConflict,
    StoredMessage,
    StoreError,
    conversation_id,
    describe_database,
    is_postgres_url,
    open_store,
)

__all__ = [
    "LogicConfig",
    "LogicService",
    "Store",
    "StoreConflict",
    "StoreError",
    "StoredMessage",
    "conversation_id",
    "default_database",
    "describe_database",
    "is_postgres_url",
    "open_store",
]
