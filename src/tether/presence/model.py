"""Rules that turn device sessions into the presence other users see. Pure functions only.

- A user is online while at least one device is connected.
- Activity is per device; the most available device wins: one active device makes the user
  ONLINE, all idle makes the user AWAY.
- Mode is per user: BUSY shows as BUSY while connected; INVISIBLE shows as OFFLINE to others.
"""

from __future__ import annotations

from collections.abc import Iterable

from tether.protocol import tether_pb2 as pb

__all__ = ["visible_status"]


def visible_status(activities: Iterable[int], mode: int) -> pb.Status:
    """Return the `tether.v1.Status` others see, from device activities and the user's mode."""
    activities = list(activities)
    if not activities or mode == pb.MODE_INVISIBLE:
        return pb.STATUS_OFFLINE
    if mode == pb.MODE_BUSY:
        return pb.STATUS_BUSY
    if any(activity != pb.ACTIVITY_IDLE for activity in activities):
        return pb.STATUS_ONLINE
    return pb.STATUS_AWAY
