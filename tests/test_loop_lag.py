"""Event loop lag measurement: a blocked loop is measured, and logged above the threshold."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from conftest import ClientFactory, ServerFactory, add_contacts

from tether.loop_lag import LoopLagMonitor


async def test_blocked_loop_logged(
    start_server: ServerFactory, connect: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server()
    await add_contacts(server, "alice", "bob")
    alice = await connect(server, "alice")
    caplog.set_level(logging.WARNING, logger="tether.loop")

    # A blocking call on the loop, as a bug in a handler would make. It lasts longer than the
    # measuring interval, so the timer falls due inside it and fires at least 0.3 s late.
    time.sleep(server.loop_lag.interval + 0.3)
    await asyncio.sleep(server.loop_lag.interval * 2)

    assert server.loop_lag.stats.maximum >= 0.3
    assert server.loop_lag.stats.warnings >= 1
    lines = [r.getMessage() for r in caplog.records if r.name == "tether.loop"]
    assert any("event loop lagged" in line for line in lines)
    assert (await alice.send("bob", "after the stall")).sequence == 1


async def test_zero_threshold_measures_silently(caplog: pytest.LogCaptureFixture) -> None:
    monitor = LoopLagMonitor(interval=0.05, threshold=0)
    caplog.set_level(logging.WARNING, logger="tether.loop")
    monitor.start()
    try:
        time.sleep(0.2)  # longer than the interval, so a measurement is at least 0.15 s late
        await asyncio.sleep(0.15)
    finally:
        monitor.stop()
    assert monitor.stats.maximum >= 0.1
    assert monitor.stats.samples >= 2
    assert monitor.stats.warnings == 0
    assert not [r for r in caplog.records if r.name == "tether.loop"]


@pytest.mark.parametrize(("interval", "threshold"), [(0, 0.1), (-1, 0.1), (0.5, -0.1)])
def test_invalid_settings_rejected(interval: float, threshold: float) -> None:
    with pytest.raises(ValueError, match="loop lag"):
        LoopLagMonitor(interval=interval, threshold=threshold)
