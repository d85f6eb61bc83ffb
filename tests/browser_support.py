"""Chromium for the browser tests: where it is, and a skip mark for machines without it.

Playwright drives the browser; the browser is Debian's `chromium` (or the one TETHER_CHROMIUM
names), because Playwright's own browser downloads are not used here. Install one with
`apt-get install chromium` (root) or point TETHER_CHROMIUM at another.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

IMAGES = Path(__file__).resolve().parents[1] / "docs" / "images"
UPDATE_SCREENSHOTS = os.environ.get("TETHER_UPDATE_SCREENSHOTS") == "1"
"""Whether the browser tests write their screenshots to docs/images/ rather than tmp_path."""


def chromium_path() -> str | None:
    """Return the Chromium to use: TETHER_CHROMIUM, else chromium on PATH or in /usr/bin."""
    named = os.environ.get("TETHER_CHROMIUM")
    if named:
        return named if os.access(named, os.X_OK) else None
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name) or shutil.which(name, path="/usr/bin")
        if found:
            return found
    return None


CHROMIUM = chromium_path()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium found: install Debian's chromium package (apt-get install chromium) "
    "or set TETHER_CHROMIUM to a Chromium binary",
)


def screenshot_folder(tmp_path: Path) -> Path:
    """Return docs/images/ with TETHER_UPDATE_SCREENSHOTS=1, else tmp_path."""
    folder = IMAGES if UPDATE_SCREENSHOTS else tmp_path
    folder.mkdir(exist_ok=True)
    return folder


@asynccontextmanager
async def launch_chromium() -> AsyncIterator[Any]:
    """Start a headless Chromium driven by Playwright; skip the test without either."""
    playwright_api = pytest.importorskip(
        "playwright.async_api", reason="the playwright package is not installed"
    )
    if CHROMIUM is None:
        pytest.skip("no Chromium found")
    async with playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM)
        yield browser
        await browser.close()
