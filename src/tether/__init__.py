"""tether: connection gateway and online-presence service for instant messaging."""

__version__ = "0.1.0"

__all__ = ["__version__"]
