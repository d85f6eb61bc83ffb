"""What operators use: the HTTP port with health probes and metrics, and structured logs.

- `tether.ops.http`: the HTTP port (aiohttp) and its routes.
- `tether.ops.metrics`: the Prometheus collector behind `GET /metrics`.
- `tether.ops.logs`: the text and JSON log formats.
- `tether.ops.api`: the server HTTP API for backends, with `api_keys`, `api_input`,
  `api_errors` and the OpenAPI document `openapi.json`.
- `tether.ops.dashboard`: the admin dashboard, with its page in `static/`; it reads gateway
  loads from `gateway_load` (sampled in each gateway) and `load_board` (in Redis), and
  presence through `presence_view`, which the server API shares.
- `tether.ops.process_stats`: CPU time and resident memory of the process.

Modules are imported one by one, so a process without an HTTP port never imports aiohttp.
"""

__all__: list[str] = []
