"""Fixtures shared by the test files: random-weight pipelines with tiny_sd's architecture (in memory, and saved as a
diffusers folder). Module-scoped, so a test file that changes one never leaks into another."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def pipe():
    """A `StableDiffusionPipeline` with tiny_sd's architecture and random weights (seed 0), progress bars off."""
    from tiny_sd.testing import random_pipeline

    p = random_pipeline(seed=0)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """That pipeline's layout saved as a diffusers folder (the `model.path=DIR` branch of loading)."""
    from tiny_sd.testing import save_random_pipeline

    return save_random_pipeline(tmp_path_factory.mktemp("pipe") / "random_sd", layout="sd15")


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    """Headless Debian chromium driven by Selenium through the system chromedriver (never Selenium Manager, which
    would try the network); skipped, not faked, where either is missing. Window 1280x900; the browser's console log
    is readable with ``browser.get_log("browser")``."""
    import shutil

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    webdriver = pytest.importorskip("selenium.webdriver")
    if binary is None or driver_path is None:
        pytest.skip("chromium and chromium-driver are not installed (CI: apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--allow-file-access-from-files", "--window-size=1280,900",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=driver_path))
    driver.set_window_size(1280, 900)
    yield driver
    driver.quit()
