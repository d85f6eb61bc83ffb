"""Read markers written behind: DeliverAcks wait in memory and are stored together.

A DeliverAck moves one device's read marker in one conversation. On SQLite, storing one marker
cost about 45 % of the CPU that storing its message cost, in a transaction of its own and in
the next send's transaction alike. Markers stored many per transaction cost far less each
(bench/store_cost.py). So the logic service keeps the newest marker of each (user, device,
conversation) in a `PendingReadMarkers` table, and stores the waiting markers:

- first thing in the next batch transaction that handles a request other than a Send, so that
  the Unread, Sync and group deletions of that batch see every marker acknowledged before
  them. Sends never read markers, so batches of sends leave them to the timer;
- in a transaction of their own `delay` seconds after the first of them arrived, if no batch
  stored them sooner. One timer serves the whole table, not one per ack, and the markers of
  many acks share that transaction;
- at once, in a transaction of their own, when `max_pending` markers wait;
- when the service closes.

A stored marker never moves back, so a later ack covers an earlier one, and the order in which
acks reach the store does not matter, also across logic workers. The participant check runs
when a marker is stored.

A failed write keeps the markers and tries again after `RETRY_DELAY` seconds, in a transaction
of their own. A batch whose transaction failed with them runs again without them, so their
failure does not fail other requests. Until a write succeeds, batches do not store them, and a
marker for a new key is dropped while the table is full.

A process killed without a clean stop loses the markers that were waiting: those of about the
last `delay` seconds while the store works, more when the event loop runs its timer late. A
lost or dropped marker costs no message, only a repeat: the device's next Unread lists those
messages again, and clients drop what they have by sequence number.
"""

from __future__ import annotations

import asyncio
import logging

from tether.logic.store import Store, StoreError

__all__ = ["RETRY_DELAY", "PendingReadMarkers"]

logger = logging.getLogger("tether.logic")

RETRY_DELAY = 1.0
"""Seconds between attempts to store waiting read markers while writes fail."""

# (user id, device id, conversation id) of a read marker.
_Key = tuple[str, str, str]


class PendingReadMarkers:
    """The newest read marker of each (user, device, conversation) that is not stored yet.

    It belongs to one logic service, and its methods run on that service's event loop.
    """

    def __init__(self, store: Store, *, delay: float, max_pending: int) -> None:
        self.delay = delay
        """Seconds a marker waits at most for a batch transaction (when writes succeed)."""
        self.max_pending = max_pending
        """Maximum of waiting markers. A marker for a new key beyond it stores them at once."""
        self.dropped = 0
        """Markers dropped because the table was full while writes failed."""
        self._store = store
        self._markers: dict[_Key, int] = {}
        self._failing = False  # after a failed write, batches leave the markers out
        self._closed = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_task: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()  # one transaction of the markers' own at a time

    def __len__(self) -> int:
        return len(self._markers)

    @property
    def ready(self) -> bool:
        """Whether markers wait and a batch transaction may store them."""
        return bool(self._markers) and not self._failing

    async def add(self, user_id: str, device_id: str, conversation: str, sequence: int) -> None:
        """Keep a DeliverAck's marker until it is stored, unless a higher one waits already.

        When the table is full and the key is new, the waiting markers are stored first. The
        marker is dropped if that fails, or if the last write failed already: then only the
        retry timer tries again, so that an outage costs no transaction per ack.
        """
        key = (user_id, device_id, conversation)
        waiting = self._markers.get(key)
        if waiting is None and len(self._markers) >= self.max_pending:
            if not self._failing:
                await self.flush()
            if len(self._markers) >= self.max_pending:
                if not self.dropped:
                    logger.warning(
                        "dropping new read markers: %d wait and storing them failed",
                        len(self._markers),
                    )
                self.dropped += 1
                return
        if waiting is None or sequence > waiting:
            self._markers[key] = sequence
        self._schedule(self.delay)

    async def write(self) -> dict[_Key, int]:
        """Store the waiting markers in the current transaction; return them for `stored`."""
        store = self._store
        written = dict(self._markers)
        # In key order, so that transactions of several workers lock the rows in one order.
        for key in sorted(written):
            user_id, device_id, conversation = key
            if await store.is_participant(user_id, conversation):
                await store.mark_read(user_id, device_id, conversation, written[key])
            else:
                logger.info("ignored delivery ack of %s for a conversation not theirs", user_id)
        return written

    def stored(self, written: dict[_Key, int]) -> None:
        """Forget the markers a committed transaction stored, unless a higher one came since."""
        if not written:
            return
        for key, sequence in written.items():
            if self._markers.get(key) == sequence:
                del self._markers[key]
        if self._failing:
            logger.info("stored read markers again after dropping %d", self.dropped)
        self._failing = False
        self.dropped = 0
        if not self._markers and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def failed(self, error: StoreError) -> None:
        """Keep the markers after a failed write and try again after RETRY_DELAY."""
        logger.warning(
            "storing %d read markers failed, will retry in %.1f s: %s",
            len(self._markers),
            RETRY_DELAY,
            error,
        )
        self._failing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._schedule(RETRY_DELAY)

    async def flush(self) -> bool:
        """Store the waiting markers in a transaction of their own; return False if it failed."""
        async with self._write_lock:
            if not self._markers:
                return True
            try:
                async with self._store.transaction():
                    written = await self.write()
            except StoreError as error:
                self.failed(error)
                return False
            self.stored(written)
            return True

    async def close(self) -> None:
        """Stop the timer and store the waiting markers one last time."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._timer_task is not None:
            await self._timer_task
        if not await self.flush():
            logger.error(
                "lost %d read markers on close; those devices get their messages again",
                len(self._markers),
            )

    def _schedule(self, delay: float) -> None:
        if self._timer is None and self._markers and not self._closed:
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._timer_task is None:
            self._timer_task = asyncio.get_running_loop().create_task(
                self._flush_on_timer(), name="tether-read-markers"
            )

    async def _flush_on_timer(self) -> None:
        try:
            await self.flush()
        except Exception:
            logger.exception("storing %d read markers failed", len(self._markers))
        finally:
            self._timer_task = None
            # Markers that came while the write ran wait for the next timer.
            self._schedule(self.delay)
