"""What operators use: the HTTP port with health probes and metrics, and structured logs.

- `tether.ops.http`: the HTTP port (aiohttp) and its routes.
- `tether.ops.metrics`: the Prometheus collector behind `GET /metrics`.
- `tether.ops.logs`: the text and JSON log formats.
- `tether.ops.api`: the server HTTP API for backends, with `api_keys`, `api_input`,
  `api_errors` and the OpenAPI document `openapi.json`.

Modules are imported one by one, so a process without an HTTP port never imports aiohttp.
"""

__all__: list[str] = []
