"""The demo messenger in headless Chromium: two browser contexts, alice and bob.

Playwright drives the browser; the browser is Debian's `chromium` (or the one TETHER_CHROMIUM
names), because Playwright's own browser downloads are not used here. Without a Chromium
binary, or without the `playwright` package, every test here is skipped with the reason.
Install one with `apt-get install chromium` (root) or point TETHER_CHROMIUM at another.

The server runs in the test's process on free ports with the demo on, and every group gets
online counts every COUNT_INTERVAL. The test takes two screenshots; with
TETHER_UPDATE_SCREENSHOTS=1 it writes them to docs/images/ for the README.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from browser_support import needs_chromium, screenshot_folder
from conftest import TIMEOUT, test_gateway_config

from tether.demo import DEMO_GROUP, DEMO_USERS
from tether.gateway.groups import GroupConfig
from tether.presence import PresenceConfig
from tether.server import EmbeddedServer, ServerConfig

playwright_api = pytest.importorskip(
    "playwright.async_api", reason="the playwright package is not installed"
)

GRACE_PERIOD = 3.0  # seconds, so that a reloaded page reconnects within it
COUNT_INTERVAL = 0.3  # seconds between group count updates
WAIT_MS = TIMEOUT * 1000
DESKTOP = {"width": 1000, "height": 640}
PHONE = {"width": 390, "height": 740}

pytestmark = needs_chromium


@pytest.fixture
async def demo_server(tmp_path: Path) -> AsyncIterator[EmbeddedServer]:
    config = ServerConfig(
        data_dir=tmp_path,
        gateway=test_gateway_config(
            groups=GroupConfig(count_threshold=0, count_interval=COUNT_INTERVAL)
        ),
        presence=PresenceConfig(grace_period=GRACE_PERIOD),
        http_port=0,
        demo=True,
    )
    server = EmbeddedServer(config)
    await server.start()
    yield server
    await server.close()


async def signed_in(
    browser: Any, server: EmbeddedServer, user: str, viewport: dict[str, int]
) -> Any:
    """Open the demo in a fresh browser context and sign in as user."""
    assert server.http is not None
    context = await browser.new_context(viewport=viewport)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.errors = errors
    await page.goto(f"http://127.0.0.1:{server.http.port}/demo/")
    await page.get_by_role("button", name=f"Sign in as {user}").click()
    await expect_text(page, "#connection", "connected")
    return page


async def expect_text(page: Any, selector: str, text: str) -> None:
    await playwright_api.expect(page.locator(selector)).to_have_text(text, timeout=WAIT_MS)


async def expect_status(page: Any, contact: str, status: str) -> None:
    """Wait until page shows contact with status (online, away, busy or offline)."""
    button = page.locator(f'.contact[data-user="{contact}"]')
    await playwright_api.expect(button).to_have_attribute("data-status", status, timeout=WAIT_MS)


async def expect_group_online(page: Any, online: int) -> None:
    """Wait until page shows the demo group with online members of all the demo users."""
    button = page.locator(f'.group[data-group="{DEMO_GROUP}"]')
    await playwright_api.expect(button).to_have_attribute(
        "data-online", str(online), timeout=WAIT_MS
    )
    # The count may be followed by " · N new".
    await playwright_api.expect(button.locator(".count")).to_have_text(
        re.compile(f"^{online} of {len(DEMO_USERS)} online"), timeout=WAIT_MS
    )


async def presence_log(page: Any, contact: str) -> list[dict[str, Any]]:
    """Return every presence change of contact that page received, snapshots included."""
    entries: list[dict[str, Any]] = await page.evaluate(
        "(contact) => window.tetherDemo.log.filter((entry) => entry.userId === contact)", contact
    )
    return entries


async def send(page: Any, text: str) -> None:
    await page.get_by_role("textbox", name="Message").fill(text)
    await page.keyboard.press("Enter")


async def test_demo_presence_and_chat(
    browser: Any, demo_server: EmbeddedServer, tmp_path: Path
) -> None:
    bob = await signed_in(browser, demo_server, "bob", PHONE)
    await expect_status(bob, "alice", "offline")
    await expect_text(bob, '.contact[data-user="alice"] .seen', "offline, not seen yet")
    await expect_group_online(bob, 1)  # bob himself

    alice = await signed_in(browser, demo_server, "alice", DESKTOP)
    await expect_status(bob, "alice", "online")
    await expect_status(alice, "bob", "online")
    await expect_group_online(bob, 2)
    await expect_group_online(alice, 2)

    # Messages both ways. A closed chat shows a count of new messages.
    await alice.locator('.contact[data-user="bob"]').click()
    await send(alice, "Hi Bob, are you there?")
    await playwright_api.expect(bob.locator('.contact[data-user="alice"] .unread')).to_have_text(
        " · 1 new", timeout=WAIT_MS
    )
    await bob.locator('.contact[data-user="alice"]').click()
    await playwright_api.expect(bob.locator(".message .text")).to_have_text(
        ["Hi Bob, are you there?"], timeout=WAIT_MS
    )
    await send(bob, "Yes! Typing on my phone.")
    await playwright_api.expect(alice.locator(".message .text")).to_have_text(
        ["Hi Bob, are you there?", "Yes! Typing on my phone."], timeout=WAIT_MS
    )

    # The group chat, both ways. Its header shows the online count.
    group = f'.group[data-group="{DEMO_GROUP}"]'
    await alice.locator(group).click()
    await expect_text(alice, "#chat-title", f"Group {DEMO_GROUP}")
    await expect_text(alice, "#chat-presence", f"2 of {len(DEMO_USERS)} online")
    await send(alice, "Hello, group!")
    await bob.get_by_role("button", name="Back to contacts").click()
    # New for bob: the group's creation, stored as its first event, and alice's message.
    await playwright_api.expect(bob.locator(f"{group} .unread")).to_have_text(
        " · 2 new", timeout=WAIT_MS
    )
    await bob.locator(group).click()
    await playwright_api.expect(bob.locator(".messages .event")).to_have_text(
        ["alice created the group with bob, carol, dave"], timeout=WAIT_MS
    )
    await playwright_api.expect(bob.locator(".message .text")).to_have_text(
        ["Hello, group!"], timeout=WAIT_MS
    )
    await send(bob, "Hi all, from the bus.")
    await playwright_api.expect(alice.locator(".message .text")).to_have_text(
        ["Hello, group!", "Hi all, from the bus."], timeout=WAIT_MS
    )
    await playwright_api.expect(alice.locator(".message .meta").nth(1)).to_contain_text("bob · ")
    await bob.get_by_role("button", name="Back to contacts").click()
    await bob.locator('.contact[data-user="alice"]').click()

    # Her own status, as bob sees it. An invisible user is not counted online in the group.
    await alice.get_by_label("Your status").select_option("busy")
    await expect_status(bob, "alice", "busy")
    await alice.get_by_label("Your status").select_option("invisible")
    await expect_status(bob, "alice", "offline")
    await expect_group_online(bob, 1)
    await alice.get_by_label("Your status").select_option("away")
    await expect_status(bob, "alice", "away")
    await expect_text(bob, "#chat-presence", "away")
    await expect_group_online(bob, 2)

    images = screenshot_folder(tmp_path)
    await alice.screenshot(path=str(images / "demo-desktop.png"))
    await bob.get_by_role("button", name="Back to contacts").click()
    await bob.screenshot(path=str(images / "demo-phone.png"))

    # A reload reconnects within the grace period: bob sees no change at all.
    seen_before = len(await presence_log(bob, "alice"))
    await alice.reload()
    await expect_text(alice, "#connection", "connected")
    await expect_status(alice, "bob", "online")
    await bob.wait_for_timeout(GRACE_PERIOD * 1000 + 1500)
    after_reload = (await presence_log(bob, "alice"))[seen_before:]
    assert after_reload == [], f"bob saw alice flap during her reload: {after_reload}"
    await expect_status(bob, "alice", "away")

    # Her page closes: after the grace period bob sees her offline with a last-seen time.
    await alice.context.close()
    await expect_status(bob, "alice", "offline")
    await expect_text(bob, '.contact[data-user="alice"] .seen', "offline, last seen just now")
    await expect_group_online(bob, 1)
    counts: list[int] = await bob.evaluate("window.tetherDemo.countLog.map((c) => c.online)")
    assert counts[:2] == [1, 2], counts  # up when alice's page opened
    assert counts[-1] == 1, counts  # down after it closed
    last = (await presence_log(bob, "alice"))[-1]
    assert last["status"] == "offline"
    assert last["lastSeenMs"] > 0
    assert bob.errors == []
    assert alice.errors == []
    await bob.context.close()


async def test_new_device_counts_each_message_once(
    browser: Any, demo_server: EmbeddedServer
) -> None:
    """A new device's unread list and its catch-up count each waiting message once."""
    alice = await signed_in(browser, demo_server, "alice", DESKTOP)
    await alice.locator(f'.group[data-group="{DEMO_GROUP}"]').click()
    await send(alice, "For the group")
    await alice.locator('.contact[data-user="bob"]').click()
    await send(alice, "For bob")
    stored = (
        f"() => ['d:alice:bob', 'g:{DEMO_GROUP}'].every((id) =>"
        " [...(window.tetherDemo.chats.get(id)?.keys() ?? [])]"
        ".some((key) => key.startsWith('seq:')))"
    )
    await alice.wait_for_function(stored, timeout=WAIT_MS)  # both acknowledged, so stored

    # A fresh browser context is a new device of bob with no read marks: both messages wait,
    # and in the group also its creation event.
    bob = await signed_in(browser, demo_server, "bob", PHONE)
    caught_up = (
        "() => window.tetherDemo.chats.get('d:alice:bob')?.size === 1"
        f" && window.tetherDemo.chats.get('g:{DEMO_GROUP}')?.size === 2"
    )
    await bob.wait_for_function(caught_up, timeout=WAIT_MS)
    waiting = {
        '.contact[data-user="alice"]': " · 1 new",
        f'.group[data-group="{DEMO_GROUP}"]': " · 2 new",
    }
    for selector, badge in waiting.items():
        await playwright_api.expect(bob.locator(f"{selector} .unread")).to_have_text(
            badge, timeout=WAIT_MS
        )

    # A live message adds one.
    await send(alice, "And one more")
    await playwright_api.expect(bob.locator('.contact[data-user="alice"] .unread')).to_have_text(
        " · 2 new", timeout=WAIT_MS
    )
    assert bob.errors == []
    assert alice.errors == []
    await alice.context.close()
    await bob.context.close()
