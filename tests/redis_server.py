"""The throwaway Redis-protocol server the tests start: the one `tether cluster` uses."""

from tether.local_redis import BINARY_ENV, RedisServer, find_server_binary, free_port

__all__ = ["BINARY_ENV", "RedisServer", "find_server_binary", "free_port"]
