"""Measure how long one Prometheus scrape blocks a gateway's event loop.

    .venv/bin/python bench/metrics_scrape.py --connections 5000 --scrapes 50

Starts an embedded server in this process with the HTTP port on a free port, logs in
`--connections` raw TCP clients (the clients live in this process too, so it has two file
descriptors per connection), then renders the metrics `--scrapes` times, the way `GET /metrics`
does, and reports the CPU time per render and the share spent summing the outgoing queues.
Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import uvloop

from tether.auth import issue_token
from tether.gateway import GatewayConfig
from tether.gateway.limits import LimitsConfig
from tether.ops.metrics import MetricsEndpoint, _queued_bytes
from tether.protocol import tether_pb2 as pb
from tether.protocol.framing import prefix_frame
from tether.server import ServerConfig, TetherServer

SECRET = "benchmark-secret-of-at-least-32-bytes"


async def main(arguments: argparse.Namespace) -> dict[str, object]:
    config = ServerConfig(
        data_dir=Path(tempfile.mkdtemp(prefix="tether-bench-")),
        secret=SECRET,
        http_port=0,
        gateway=GatewayConfig(
            tcp_port=0,
            ws_port=None,
            limits=LimitsConfig(
                max_connections_per_ip=1_000_000,
                new_connections_per_second=1_000_000,
                new_connection_burst=1_000_000,
            ),
        ),
        loop_lag_threshold=0,
    )
    server = TetherServer(config)
    await server.start()
    writers = []
    try:
        for index in range(arguments.connections):
            _, writer = await asyncio.open_connection("127.0.0.1", server.tcp_port)
            connect = pb.Connect(
                protocol_version=1, token=issue_token(SECRET, f"u{index}"), device_id="d"
            )
            writer.write(prefix_frame(pb.Frame(connect=connect).SerializeToString()))
            writers.append(writer)
        gateway = server.gateway
        assert gateway is not None
        while gateway.stats()["open"] < arguments.connections:
            await asyncio.sleep(0.1)

        endpoint = MetricsEndpoint(server)
        renders, sums = [], []
        size = 0
        for _ in range(arguments.scrapes):
            started = time.process_time()
            body, _ = endpoint.render("")
            renders.append(time.process_time() - started)
            size = len(body)
            started = time.process_time()
            _queued_bytes(gateway)
            sums.append(time.process_time() - started)
        return {
            "connections": arguments.connections,
            "scrapes": arguments.scrapes,
            "render_ms_median": round(statistics.median(renders) * 1000, 3),
            "render_ms_max": round(max(renders) * 1000, 3),
            "queue_sum_ms_median": round(statistics.median(sums) * 1000, 3),
            "body_bytes": size,
        }
    finally:
        for writer in writers:
            writer.close()
        await server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--scrapes", type=int, default=50)
    print(json.dumps(uvloop.run(main(parser.parse_args())), indent=2))
