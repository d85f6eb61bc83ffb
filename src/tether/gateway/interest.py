"""Presence interest: which local connections watch which users, and what presence they see.

Tables, kept on the gateway and local to this process:

- `watchers`: watched user -> local connections that may see that user's presence (contacts).
  The gateway subscribes to a user's presence channel while that set is non-empty.
- `presence_cache`: last known presence of every watched user, used for snapshots.

`PresenceInterest` sends the presence snapshot of a new session, applies contact-list changes,
fans presence changes out to watchers and reads presence again after a bus outage.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from tether.bus import channels
from tether.bus import envelope_pb2 as env
from tether.gateway.connection import Connection
from tether.protocol import tether_pb2 as pb
from tether.protocol.states import ConnectionState

if TYPE_CHECKING:
    from tether.bus.base import Bus
    from tether.gateway.config import GatewayConfig
    from tether.gateway.counters import GatewayCounters
    from tether.gateway.presence_link import PresenceLink

__all__ = ["PresenceInterest"]

logger = logging.getLogger("tether.gateway")


class PresenceInterest:
    """Presence interest of a `Gateway`, which inherits this mixin."""

    if TYPE_CHECKING:
        # Set by Gateway.__init__.
        bus: Bus
        presence: PresenceLink
        watchers: dict[str, set[Connection]]
        presence_cache: dict[str, pb.UserPresence]
        config: GatewayConfig
        counters: GatewayCounters

    # Presence changes from the bus.

    def _limit_watched(self, connection: Connection, contacts: frozenset[str]) -> frozenset[str]:
        """Return at most max_watched_users contacts, in user id order, logging a cut."""
        limit = self.config.limits.max_watched_users
        if len(contacts) <= limit:
            return contacts
        logger.warning(
            "%s has %d contacts; presence is shown for the first %d",
            connection.describe(), len(contacts), limit,
        )  # fmt: skip
        return frozenset(sorted(contacts)[:limit])

    def _on_presence_change(self, channel: str, payload: bytes) -> None:
        presence = env.Envelope.FromString(payload).presence_change.presence
        counters = self.counters
        counters.presence_in += 1
        if presence.status != pb.STATUS_OFFLINE:
            # Presence sets last_seen_ms to the time it published a visible online status.
            age_ms = int(time.time() * 1000) - presence.last_seen_ms
            counters.presence_latency.observe(max(0, age_ms) / 1000)
        self._apply_presence(presence)

    def _apply_presence(self, presence: pb.UserPresence) -> None:
        """Cache a user's newer presence and queue it to every watcher that had its snapshot."""
        user_id = presence.user_id
        watchers = self.watchers.get(user_id)
        if not watchers:
            return
        cached = self.presence_cache.get(user_id)
        if cached is not None and cached.version >= presence.version:
            return  # older than what a snapshot already showed
        self.presence_cache[user_id] = presence
        frame = pb.Frame(presence_update=pb.PresenceUpdate(presence=presence)).SerializeToString()
        sent = 0
        for connection in list(watchers):  # a slow consumer leaves the set during the loop
            if connection.snapshot_sent:
                connection.send_payload(frame)
                sent += 1
        self.counters.presence_out += sent

    # Watchers, snapshots and contact lists.

    def _watch(self, connection: Connection, users: frozenset[str] | list[str]) -> None:
        for user_id in users:
            watchers = self.watchers.get(user_id)
            if watchers is None:
                watchers = self.watchers[user_id] = set()
                self.bus.subscribe(channels.presence_channel(user_id), self._on_presence_change)
            watchers.add(connection)

    def _unwatch(self, connection: Connection, users: frozenset[str] | list[str]) -> None:
        for user_id in users:
            watchers = self.watchers.get(user_id)
            if watchers is None:
                continue
            watchers.discard(connection)
            if not watchers:
                del self.watchers[user_id]
                self.presence_cache.pop(user_id, None)
                self.bus.unsubscribe(channels.presence_channel(user_id), self._on_presence_change)

    def _send_snapshot(self, connection: Connection) -> None:
        missing = [user for user in connection.contacts if user not in self.presence_cache]
        if not missing:
            self._finish_snapshot(connection, [])
            return
        self.presence.query(missing, functools.partial(self._finish_snapshot, connection))

    def _cache_presence(self, users: list[pb.UserPresence]) -> None:
        """Keep the newest known presence of each watched user."""
        cache = self.presence_cache
        for presence in users:
            cached = cache.get(presence.user_id)
            watched = presence.user_id in self.watchers
            if watched and (cached is None or cached.version < presence.version):
                cache[presence.user_id] = presence

    def _finish_snapshot(self, connection: Connection, users: list[pb.UserPresence] | None) -> None:
        cache = self.presence_cache
        if users:
            self._cache_presence(users)
        if connection.protocol.state is not ConnectionState.OPEN:
            return
        if users is None and any(user not in cache for user in connection.contacts):
            logger.warning("presence did not respond to the snapshot for %s", connection.describe())
        contacts = [
            cache.get(user_id) or pb.UserPresence(user_id=user_id, status=pb.STATUS_OFFLINE)
            for user_id in sorted(connection.contacts)
        ]
        connection.send_frame(pb.Frame(presence_snapshot=pb.PresenceSnapshot(contacts=contacts)))
        connection.snapshot_sent = True

    def _update_contacts(
        self, connection: Connection, added: Iterable[str], removed: Iterable[str]
    ) -> None:
        new_contacts = self._limit_watched(
            connection, frozenset((connection.contacts | set(added)) - set(removed))
        )
        gained = sorted(new_contacts - connection.contacts)
        lost = sorted(connection.contacts - new_contacts)
        if not gained and not lost:
            return
        connection.contacts = frozenset(new_contacts)
        self._unwatch(connection, lost)
        self._watch(connection, gained)
        connection.send_frame(
            pb.Frame(contacts_changed=pb.ContactsChanged(added=gained, removed=lost))
        )
        known = [self.presence_cache[user] for user in gained if user in self.presence_cache]
        for presence in known:
            connection.send_frame(pb.Frame(presence_update=pb.PresenceUpdate(presence=presence)))
        unknown = [user for user in gained if user not in self.presence_cache]
        if unknown:
            self.presence.query(unknown, functools.partial(self._on_added_presence, connection))

    def _on_added_presence(
        self, connection: Connection, users: list[pb.UserPresence] | None
    ) -> None:
        if users is None or connection.protocol.state is not ConnectionState.OPEN:
            return
        self._cache_presence(users)
        for presence in users:
            if presence.user_id in connection.contacts:
                cached = self.presence_cache.get(presence.user_id, presence)
                connection.send_frame(pb.Frame(presence_update=pb.PresenceUpdate(presence=cached)))

    # Presence after a bus outage.

    def _on_presence_refresh(self, users: list[pb.UserPresence] | None) -> None:
        for presence in users or ():
            self._apply_presence(presence)
