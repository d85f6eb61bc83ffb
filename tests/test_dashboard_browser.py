"""The admin dashboard in headless Chromium: sign in, watch the counts, see a user come online.

The server runs embedded in the test's process; users connect with tether's Python client.
Without Chromium or the `playwright` package the test is skipped with the reason
(browser_support.py). With TETHER_UPDATE_SCREENSHOTS=1 the screenshot goes to
docs/images/dashboard.png.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from browser_support import needs_chromium, screenshot_folder
from conftest import TIMEOUT, ClientFactory, ServerFactory, add_contacts, next_of

from tether.client import events as ev

playwright_api = pytest.importorskip(
    "playwright.async_api", reason="the playwright package is not installed"
)

pytestmark = needs_chromium

ADMIN_KEY = "admin-key-for-the-browser-test-01"
WAIT_MS = TIMEOUT * 1000
VIEWPORT = {"width": 1280, "height": 760}


async def expect_text(page: Any, selector: str, text: str) -> None:
    await playwright_api.expect(page.locator(selector)).to_have_text(text, timeout=WAIT_MS)


async def test_dashboard_shows_user_coming_online(
    browser: Any, start_server: ServerFactory, connect: ClientFactory, tmp_path: Path
) -> None:
    server = await start_server(http_port=0, admin_keys=(ADMIN_KEY,), load_report_interval=0.5)
    assert server.http is not None and server.gateway is not None
    context = await browser.new_context(viewport=VIEWPORT)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    url = f"http://127.0.0.1:{server.http.port}/admin/"
    await page.goto(url)

    # A wrong key is rejected and the login form comes back with the reason.
    await page.get_by_label("Admin key").fill("not-the-admin-key-0123456789")
    await page.get_by_role("button", name="Sign in").click()
    await expect_text(page, "#login-error", "Signed out: the admin key is not valid.")
    assert await page.evaluate("sessionStorage.length") == 0

    await page.get_by_label("Admin key").fill(ADMIN_KEY)
    await page.get_by_role("button", name="Sign in").click()
    await expect_text(page, "#mode", "embedded")
    await expect_text(page, "#served-by", server.gateway.id)
    await expect_text(page, "#total-gateways", "1")
    await expect_text(page, "#total-connections", "0")
    assert page.url == url, "the key must never reach the URL"

    await page.get_by_label("User id").fill("alice")
    await page.get_by_role("button", name="Look up").click()
    await expect_text(page, "#user-status", "offline")
    await expect_text(page, "#devices tbody", "No device connected")

    # alice comes online with the Python client: the page shows her device and the counts.
    await add_contacts(server, "alice", "bob")
    alice = await connect(server, "alice", device="phone")
    await expect_text(page, "#user-status", "online")
    gateway_row = page.locator(f'#gateways tr[data-gateway="{server.gateway.id}"]')
    device_row = page.locator('#devices tr[data-device="phone"]')
    await playwright_api.expect(device_row).to_contain_text(server.gateway.id, timeout=WAIT_MS)
    await expect_text(page, "#total-connections", "1")
    await expect_text(page, "#total-users", "1")
    await playwright_api.expect(gateway_row.locator('[data-field="connections"]')).to_have_text(
        "1", timeout=WAIT_MS
    )

    # More users and messages, for the counters and for the screenshot: 40 messages over
    # about two seconds, so that the page shows a rate above zero.
    bob = await connect(server, "bob", device="laptop", transport="ws")
    await connect(server, "carol", device="tablet", status="away")
    for number in range(40):
        await alice.send("bob", f"message {number}")
        await next_of(bob, ev.Message)
        await asyncio.sleep(0.05)
    await playwright_api.expect(page.locator("#rate-messages")).not_to_have_text(
        "0", timeout=WAIT_MS
    )
    await expect_text(page, "#total-connections", "3")
    await expect_text(page, "#total-users", "3")
    await expect_text(page, "#counter-slow_consumer_disconnects", "0")
    await page.screenshot(path=str(screenshot_folder(tmp_path) / "dashboard.png"), full_page=True)

    # Signing out removes the key from sessionStorage.
    await page.get_by_role("button", name="Sign out").click()
    await playwright_api.expect(page.get_by_label("Admin key")).to_be_visible()
    assert await page.evaluate("sessionStorage.length") == 0
    assert errors == []
    await context.close()
