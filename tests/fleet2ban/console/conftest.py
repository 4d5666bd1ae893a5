"""Console tests: a headless Chromium shared per module, record writers, a console per test.

Chromium and its driver are Debian's (``chromium``, ``chromium-driver``; scripts/setup installs them);
Selenium drives /usr/bin/chromedriver directly (no Selenium Manager download).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_here = str(Path(__file__).parent)
if _here not in sys.path:
    sys.path.insert(0, _here)

from console_helpers import CHROME_ARGS, CHROMEDRIVER, CHROMIUM, browser_unavailable  # noqa: E402


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the whole module (a fresh profile, deleted afterwards)."""
    reason = browser_unavailable()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="f2b-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in CHROME_ARGS:
        opts.add_argument(arg)
    opts.add_argument(f"--user-data-dir={profile}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: $FLEET2BAN_TEST_ARTEFACTS/console if set, else a temporary directory."""
    root = os.environ.get("FLEET2BAN_TEST_ARTEFACTS")
    if root:
        d = Path(root) / "console"
        d.mkdir(parents=True, exist_ok=True)
        return d
    return tmp_path_factory.mktemp("console-screens")
