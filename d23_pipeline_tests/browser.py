"""Debian's Chromium, driven by playwright, for tests that look at a page as a person would.

playwright only drives it and never downloads a browser; ``make test`` installs the chromium.
"""

import contextlib
import shutil
from collections.abc import Iterator
from typing import Any

from playwright.sync_api import Page, sync_playwright


@contextlib.contextmanager
def chromium_page(**options: Any) -> Iterator[Page]:
    """A new page (``options`` as for ``Browser.new_page``) in a headless Chromium."""
    chromium = shutil.which("chromium")
    assert chromium, "no chromium on PATH: `make browser` installs Debian's (make test does)"
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            # Root in CI and containers: Chromium's sandbox needs user namespaces it may not have.
            args=["--no-sandbox"],
        )
        try:
            yield browser.new_page(**options)
        finally:
            browser.close()
