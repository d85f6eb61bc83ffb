"""Presence: device sessions aggregated into the user presence contacts see."""

from tether.presence.model import visible_status
from tether.presence.service import PresenceConfig, PresenceService

__all__ = ["PresenceConfig", "PresenceService", "visible_status"]
