"""The `tether` command: serve, logic, cluster, token, contacts, groups, client and bench."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from tether.bench.cli import add_bench_parser
from tether.cli.hook_options import add_hook_options
from tether.cli.settings import (
    SECTIONS,
    SettingError,
    add_config_option,
    add_option,
    boolean_value,
    default_data_dir,
    port_value,
    resolve,
)
from tether.cli.transport_options import add_client_tls_options, add_transport_security_options
from tether.urls import redact_url

__all__ = ["check_config_file", "main", "run"]


def run(coroutine: Coroutine[Any, Any, int]) -> int:
    """Run a coroutine on uvloop when it is installed, else on the default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _not_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _not_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def _paths(text: str) -> tuple[Path, ...]:
    return tuple(Path(part.strip()) for part in text.split(",") if part.strip())


def _optional_path(text: str) -> Path | None:
    return Path(text) if text else None


def _add_key_options(parser: argparse.ArgumentParser) -> None:
    add_option(
        parser,
        "--public-key-files",
        convert=_paths,
        default="",  # argparse passes a string default through convert
        help="PEM public key files that verify tokens, comma-separated: RSA for RS256, "
        "EC P-256 for ES256",
    )
    add_option(
        parser,
        "--jwks-file",
        convert=_optional_path,
        default="",
        help="JWKS file (JSON with a keys array) whose keys verify tokens by kid",
    )
    add_option(
        parser,
        "--key-reload-interval",
        convert=_not_negative,
        default=10.0,
        help="seconds between checks of the key files for changes (0: at every token); "
        "SIGHUP reloads them at once",
    )


def _add_cluster_options(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    add_option(
        parser,
        "--redis",
        convert=str,
        default="",
        help="Redis (>= 7) or Valkey URL of the cluster, e.g. redis://127.0.0.1:6379/0"
        + ("" if required else "; empty runs embedded"),
    )
    add_option(
        parser,
        "--redis-cluster",
        convert=boolean_value,
        default=False,
        help="the --redis URL names a node of a Redis Cluster or Valkey cluster (true or false)",
    )
    add_option(
        parser,
        "--lease-timeout",
        convert=_positive,
        default=5.0,
        help="seconds a crashed gateway's users stay online before others reap them",
    )


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    add_option(
        parser,
        "--data-dir",
        convert=Path,
        default=default_data_dir(),
        help="folder for the database, the development secret and the control socket",
    )
    add_option(
        parser,
        "--secret",
        convert=str,
        default="",
        secret=True,
        help="HS256 token secret; empty uses the one stored in the data folder",
    )


def _log_level(text: str) -> str:
    from tether.ops.logs import LOG_LEVELS

    lowered = text.lower()
    if lowered not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(LOG_LEVELS)}, got {text!r}")
    return lowered


def _log_format(text: str) -> str:
    from tether.ops.logs import LOG_FORMATS

    lowered = text.lower()
    if lowered not in LOG_FORMATS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(LOG_FORMATS)}, got {text!r}")
    return lowered


def _add_log_options(parser: argparse.ArgumentParser) -> None:
    add_option(
        parser, "--log-level", convert=_log_level, default="info",
        help="debug, info, warning, error or critical",
    )  # fmt: skip
    add_option(
        parser,
        "--log-format",
        convert=_log_format,
        default="text",
        help="text, or json for one JSON object per line with connection and user ids",
    )


def _add_process_options(parser: argparse.ArgumentParser) -> None:
    _add_log_options(parser)
    add_option(
        parser,
        "--loop-lag-warning",
        convert=_not_negative,
        default=0.1,
        help="seconds of event loop lag that log a warning (0: never)",
    )


def _redact_database(value: str) -> str:
    """Return a database setting with a URL's password masked (a file path as it is)."""
    return redact_url(value) if "://" in value else value


def _add_database_option(parser: argparse.ArgumentParser) -> None:
    add_option(
        parser,
        "--database",
        convert=str,
        default="",
        redact=_redact_database,
        help="store of the reference logic: a SQLite file, or a PostgreSQL URL "
        "postgresql://USER:PASSWORD@HOST:PORT/DATABASE; empty uses tether.db in the data folder",
    )


def _add_http_options(parser: argparse.ArgumentParser, *, host: bool) -> None:
    if host:
        add_option(parser, "--host", convert=str, default="127.0.0.1", help="address to listen on")
    add_option(
        parser,
        "--http-port",
        convert=port_value,
        default="off",
        help="HTTP port for health probes and Prometheus metrics, on --host (0 picks a free "
        "port, 'off' disables; docs/operations.md uses 7402)",
    )
    _add_api_options(parser)


def _key_list(kind: str) -> Callable[[str], tuple[str, ...]]:
    """Return the conversion of a comma-separated list of kind ("API" or "admin") keys."""

    def keys(text: str) -> tuple[str, ...]:
        from tether.ops.api_keys import parse_api_keys

        try:
            return parse_api_keys(text, kind)
        except ValueError as error:  # argparse would print the value, a secret, for a ValueError
            raise argparse.ArgumentTypeError(str(error)) from error

    return keys


def _add_api_options(parser: argparse.ArgumentParser) -> None:
    add_option(
        parser,
        "--api-keys",
        convert=_key_list("API"),
        default="",
        secret=True,
        help="keys of the server HTTP API on the HTTP port, comma-separated, each at least 16 "
        "characters; with neither this nor --api-keys-file the API is off",
    )
    add_option(
        parser,
        "--api-keys-file",
        convert=_optional_path,
        default="",
        help="file of server HTTP API keys, one per line ('#' starts a comment), read at start",
    )
    add_option(
        parser,
        "--admin-keys",
        convert=_key_list("admin"),
        default="",
        secret=True,
        help="keys of the admin dashboard at /admin/ on the HTTP port, comma-separated, each "
        "at least 16 characters; with neither this nor --admin-keys-file the dashboard is off",
    )
    add_option(
        parser,
        "--admin-keys-file",
        convert=_optional_path,
        default="",
        help="file of admin dashboard keys, one per line ('#' starts a comment), read at start",
    )


def _add_serve_options(serve: argparse.ArgumentParser) -> None:
    """Add the options of `tether serve` (also read by `tether config show serve`)."""
    add_config_option(serve, "serve")
    _add_data_options(serve)
    _add_key_options(serve)
    _add_database_option(serve)
    _add_cluster_options(serve)
    add_option(
        serve,
        "--gateway-id",
        convert=str,
        default="",
        help="name of this gateway in the cluster; a restart under the same name replaces "
        "its old sessions (empty: random)",
    )
    add_option(
        serve,
        "--logic",
        convert=boolean_value,
        default=True,
        help="with --redis: also run a logic worker in this process (true or false)",
    )
    add_option(serve, "--host", convert=str, default="127.0.0.1", help="address to listen on")
    add_option(
        serve,
        "--tcp-port",
        convert=port_value,
        default=7400,
        help="TCP port (0 picks a free port, 'off' disables)",
    )
    add_option(
        serve,
        "--ws-port",
        convert=port_value,
        default=7401,
        help="WebSocket port (0 picks a free port, 'off' disables)",
    )
    add_option(serve, "--ws-path", convert=str, default="/ws", help="WebSocket URL path")
    add_option(
        serve,
        "--reuse-port",
        convert=boolean_value,
        default=False,
        help="listen with SO_REUSEPORT so several gateway processes of one cluster (--redis) "
        "share the TCP and WebSocket ports; the kernel spreads new connections (true or false)",
    )
    add_transport_security_options(serve)
    add_option(
        serve,
        "--heartbeat-interval",
        convert=_positive,
        default=4.0,
        help="seconds between client heartbeats, sent to clients on connect",
    )
    add_option(
        serve,
        "--offline-timeout",
        convert=_positive,
        default=60.0,
        help="seconds of silence after which a device is offline",
    )
    add_option(
        serve,
        "--grace-period",
        convert=_positive,
        default=5.0,
        help="seconds a user's last device may be gone before contacts see offline",
    )
    add_option(
        serve,
        "--connect-timeout",
        convert=_positive,
        default=5.0,
        help="seconds a new connection has to send its Connect frame",
    )
    add_option(
        serve,
        "--request-timeout",
        convert=_positive,
        default=5.0,
        help="seconds to wait for a reply from the logic layer",
    )
    add_option(
        serve,
        "--reconnect-spread",
        convert=_not_negative,
        default=2.0,
        help="seconds over which clients closed by a shutdown spread their reconnects",
    )
    add_option(
        serve,
        "--max-frame-bytes",
        convert=_positive_int,
        default=65_536,
        help="largest frame accepted from a client, in bytes",
    )
    add_option(
        serve,
        "--max-body-bytes",
        convert=_positive_int,
        default=32_768,
        help="largest message body, in bytes",
    )
    add_option(
        serve,
        "--max-outgoing-bytes",
        convert=_positive_int,
        default=1_048_576,
        help="bytes queued to one client before it is closed as a slow consumer",
    )
    add_option(
        serve,
        "--frames-per-second",
        convert=_positive,
        default=100.0,
        help="frames one connection may send per second on average",
    )
    add_option(
        serve,
        "--frame-burst",
        convert=_positive_int,
        default=200,
        help="frames one connection may send at once above the average",
    )
    add_option(
        serve,
        "--new-connections-per-second",
        convert=_positive,
        default=1000.0,
        help="connections the gateway accepts per second; above it clients are told to retry",
    )
    add_option(
        serve,
        "--connect-retry-window",
        convert=_positive,
        default=10.0,
        help="seconds over which clients turned away by the connection rate spread their retries",
    )
    add_option(
        serve,
        "--max-connections-per-ip",
        convert=_positive_int,
        default=1000,
        help="concurrent connections from one IP address",
    )
    add_option(
        serve,
        "--max-devices-per-user",
        convert=_positive_int,
        default=10,
        help="concurrent devices of one user on this gateway",
    )
    _add_group_count_threshold(serve)
    add_option(
        serve,
        "--group-count-interval",
        convert=_positive,
        default=2.0,
        help="seconds between online count reports of large groups, and the shortest time "
        "between two count updates a member gets",
    )
    add_option(
        serve,
        "--pushes-per-second",
        convert=_positive,
        default=20.0,
        help="Deliver frames of group messages one connection gets per second; above it, "
        "messages are merged into one frame per push tick",
    )
    add_option(
        serve,
        "--push-burst",
        convert=_positive_int,
        default=20,
        help="Deliver frames of group messages one connection may get at once after a quiet period",
    )
    _add_http_options(serve, host=False)
    add_option(
        serve,
        "--load-report-interval",
        convert=_positive,
        default=2.0,
        help="seconds between samples of this gateway's load for the admin dashboard; with "
        "--redis each sample is written to Redis and expires after three intervals",
    )
    add_option(
        serve,
        "--demo",
        convert=boolean_value,
        default=False,
        help="serve the demo messenger at /demo/ on the HTTP port (7402 when --http-port is "
        "off); it hands out tokens for its users, so it runs only embedded with the development "
        "secret of the data folder, never in production (true or false)",
    )
    add_hook_options(serve)
    _add_process_options(serve)


def _add_group_count_threshold(parser: argparse.ArgumentParser) -> None:
    add_option(
        parser,
        "--group-count-threshold",
        convert=_not_negative_int,
        default=100,
        help="groups with more members than this get online counts (0 with `tether serve --demo "
        "true` unless set); use the same value on every gateway and logic worker of a cluster",
    )


def _add_logic_options(logic: argparse.ArgumentParser) -> None:
    """Add the options of `tether logic` (also read by `tether config show logic`)."""
    add_config_option(logic, "logic")
    _add_data_options(logic)
    _add_database_option(logic)
    _add_cluster_options(logic, required=True)
    _add_http_options(logic, host=True)
    # The server API's online counts of a logic worker must know which groups gateways count.
    _add_group_count_threshold(logic)
    add_hook_options(logic)
    _add_process_options(logic)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tether", description="Connection gateway and online-presence service."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run a gateway: embedded with presence and logic, or a cluster member with --redis",
    )
    _add_serve_options(serve)
    logic = commands.add_parser("logic", help="run a logic worker of a cluster")
    _add_logic_options(logic)

    config = commands.add_parser("config", help="show the effective configuration")
    config_actions = config.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = config_actions.add_parser(
        "show",
        help="print the settings `tether serve` or `tether logic` would use, as TOML with "
        "secrets masked",
    )
    targets = show.add_subparsers(dest="target", required=True, metavar="{serve,logic}")
    _add_serve_options(targets.add_parser("serve", help="settings of tether serve (default)"))
    _add_logic_options(targets.add_parser("logic", help="settings of tether logic"))

    cluster = commands.add_parser(
        "cluster", help="start a local cluster: Redis, gateways and logic workers"
    )
    _add_data_options(cluster)
    _add_database_option(cluster)
    add_option(cluster, "--gateways", convert=_positive_int, default=2, help="gateway processes")
    add_option(
        cluster, "--logic-workers", convert=_positive_int, default=1, help="logic worker processes"
    )
    add_option(
        cluster,
        "--tcp-port",
        convert=_positive_int,
        default=7400,
        help="TCP port of the first gateway; the others take the next ones",
    )
    add_option(
        cluster,
        "--ws-port",
        convert=_positive_int,
        default=7500,
        help="WebSocket port of the first gateway; the others take the next ones",
    )
    add_option(
        cluster,
        "--redis",
        convert=str,
        default="",
        help="Redis or Valkey URL to use; empty starts a private server on a free port",
    )
    add_option(
        cluster,
        "--http-port",
        convert=port_value,
        default="off",
        help="HTTP port (health, metrics) of the first gateway; the other gateways, then the "
        "logic workers, take the next ones ('off' disables)",
    )
    add_option(
        cluster,
        "--redis-cluster",
        convert=boolean_value,
        default=False,
        help="use a Redis Cluster: --redis names one of its nodes, or, without --redis, a "
        "private cluster of three primaries is started (true or false)",
    )
    cluster.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="TOML file that every gateway and logic worker reads, as with `tether serve "
        "--config`; TETHER_* variables reach them too",
    )
    _add_log_options(cluster)

    token = commands.add_parser("token", help="print a development token for a user")
    token.add_argument("user", help="user id (the token's sub claim)")
    add_option(
        token,
        "--ttl",
        convert=_positive,
        default=None,
        help="seconds until the token expires (none: never)",
    )
    add_option(
        token,
        "--private-key",
        convert=_optional_path,
        default="",
        help="PEM private key file to sign with instead of the secret: RSA makes an RS256 "
        "token, EC P-256 an ES256 token",
    )
    add_option(token, "--kid", convert=str, default="", help="key id to put in the token header")
    _add_data_options(token)

    contacts = commands.add_parser("contacts", help="add, remove or list mutual contacts")
    contacts.add_argument("action", choices=["add", "remove", "list"])
    contacts.add_argument(
        "users", nargs="+", metavar="USER", help="two users for add and remove, one for list"
    )
    _add_data_options(contacts)
    _add_database_option(contacts)

    groups = commands.add_parser(
        "groups",
        help=(
            "create or delete groups, add or remove members, hand a group to a new owner, list "
            "a user's groups or a group's members"
        ),
        description=(
            "tether groups create GROUP OWNER [MEMBER...] | add GROUP USER... | "
            "remove GROUP USER... | owner GROUP USER | delete GROUP | list USER | "
            "members GROUP. Changes go through the running server on the data folder, if any, "
            "and act with the owner's rights."
        ),
    )
    groups.add_argument(
        "action", choices=["create", "add", "remove", "owner", "delete", "list", "members"]
    )
    groups.add_argument("names", nargs="+", metavar="NAME", help="group and user ids, see above")
    _add_data_options(groups)
    _add_database_option(groups)

    client = commands.add_parser(
        "client",
        help="line-oriented client: commands on stdin, events as JSON lines on stdout",
        description=(
            "Commands, one per line: 'send USER TEXT', 'status online|away|busy|invisible', "
            "'quit'. Every event is printed as one JSON object per line."
        ),
    )
    client.add_argument("user", help="user id to connect as")
    add_option(
        client,
        "--url",
        convert=str,
        default="tcp://127.0.0.1:7400",
        help="gateway URL: tcp://host:port, tls://host:port, ws://host:port/ws or "
        "wss://host:port/ws",
    )
    add_client_tls_options(client)
    add_option(
        client,
        "--json",
        convert=boolean_value,
        default=False,
        help="speak the tether.v1.json subprotocol, frames as JSON text (ws:// and wss:// URLs "
        "only; true or false)",
    )
    add_option(client, "--device", convert=str, default="cli", help="device id")
    add_option(
        client,
        "--token",
        convert=str,
        default="",
        secret=True,
        help="token to present; empty makes one from the data folder's secret",
    )
    _add_data_options(client)

    add_bench_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `tether` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["config", "show"] and argv[2:3] not in (["serve"], ["logic"], ["-h"]):
        argv.insert(2, "serve")  # the default target
    arguments = _build_parser().parse_args(argv)
    try:
        settings = resolve(arguments)
    except SettingError as error:
        print(f"tether {arguments.command}: error: {error}", file=sys.stderr)
        return 2
    if arguments.command in ("serve", "config"):
        from tether.cli.serve import apply_demo_defaults

        apply_demo_defaults(arguments, settings)
    if arguments.command == "config":
        from tether.cli.config import show_config

        return show_config(arguments, settings)
    if arguments.command == "serve":
        from tether.cli.serve import serve

        return run(serve(arguments))
    if arguments.command == "logic":
        from tether.cli.serve import logic_worker

        return run(logic_worker(arguments))
    if arguments.command == "cluster":
        from tether.cli.cluster import cluster

        return run(cluster(arguments))
    if arguments.command == "token":
        return _token(arguments)
    if arguments.command == "contacts":
        from tether.cli.contacts import contacts

        return run(contacts(arguments))
    if arguments.command == "groups":
        from tether.cli.groups import groups

        return run(groups(arguments))
    if arguments.command == "client":
        from tether.cli.line_client import line_client

        return run(line_client(arguments))
    if arguments.command == "bench":
        from tether.bench.cli import bench

        return bench(arguments)
    raise AssertionError(arguments.command)


def _token(arguments: argparse.Namespace) -> int:
    from tether.auth import issue_token
    from tether.keys import PrivateKey, load_private_key_file
    from tether.server import load_or_create_secret

    key: str | PrivateKey
    try:
        if arguments.private_key is not None:
            key, algorithm = load_private_key_file(arguments.private_key)
        else:
            key, algorithm = arguments.secret or load_or_create_secret(arguments.data_dir), "HS256"
        token = issue_token(
            key, arguments.user, ttl=arguments.ttl, algorithm=algorithm, kid=arguments.kid or None
        )
    except ValueError as error:
        print(f"tether token: {error}", file=sys.stderr)
        return 2
    print(token)
    return 0


def check_config_file(path: Path) -> None:
    """Raise SettingError when `tether serve` or `tether logic` would fail to start with the
    configuration file at path, or with the TETHER_* variables set now.

    `tether cluster` checks its `--config` file so before it starts anything: each of its
    processes reads the file and the variables by these rules.
    """
    parser = _build_parser()
    for command in SECTIONS:
        resolve(parser.parse_args(["config", "show", command, "--config", str(path)]))


def install_stop_signals(stop: asyncio.Event) -> None:
    """Set stop on SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    for number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(number, stop.set)


def configure_logging(level: str, log_format: str = "text") -> None:
    """Log to stderr at level, as text or JSON lines (see tether.ops.logs)."""
    from tether.ops.logs import configure_logging as configure

    configure(level, log_format)


if __name__ == "__main__":
    sys.exit(main())
