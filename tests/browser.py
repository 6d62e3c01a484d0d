"""Headless Chromium for the web page tests: Debian's ``chromium`` and ``chromedriver`` driven by Selenium.

Browser downloads are not possible where the tests run, so nothing here fetches a browser: a missing one skips
the tests, or fails them under CI (``.ci/run`` installs it with apt).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from speech_clips import missing

BINARIES = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver",)


def _find(names: tuple[str, ...], env: str) -> str | None:
    if os.environ.get(env):
        return os.environ[env]
    for name in names:
        path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
        if path:
            return path
    return None


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator:
    """A headless Chromium (``driver``) that logs its network traffic (see :func:`request_hosts`)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing("selenium is not installed (pip install -e '.[test]')")
    binary = _find(BINARIES, "CHROMIUM")
    driver_path = _find(DRIVERS, "CHROMEDRIVER")
    if binary is None or driver_path is None:
        missing("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in (
        "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
        f"--window-size={width},{height}", "--autoplay-policy=no-user-gesture-required",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        # No background traffic of the browser's own (updates, safe browsing, metrics): the network log then
        # holds only what the page asked for.
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-default-apps", "--no-first-run", "--metrics-recording-only",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        driver.set_script_timeout(60)
        yield driver
    finally:
        driver.quit()


def request_hosts(driver) -> list[str]:
    """``host:port`` of every request the browser sent since the last call (blob: and data: URLs are local and
    left out)."""
    hosts = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") != "Network.requestWillBeSent":
            continue
        url = message["params"]["request"]["url"]
        if url.startswith(("blob:", "data:")):
            continue
        parts = urlsplit(url)
        hosts.append(f"{parts.hostname}:{parts.port}" if parts.port else f"{parts.scheme}://{parts.hostname}")
    return hosts


def console_errors(driver) -> list[str]:
    """The page's console errors since the last call (a failed script or a blocked load shows here)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
