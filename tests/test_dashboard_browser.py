"""`hpsearch dashboard` in a real headless Chromium: the pages a person opens render our study,
its trials and our note. Screenshots go to $HPSEARCH_SCREENSHOTS (e.g. `docs`, for the README's
docs/dashboard.png), else to the test's tmp folder.

Needs Debian's chromium and chromium-driver (`apt-get install -y chromium chromium-driver`);
skips, saying which is missing, where they are not installed (fails instead in CI).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOTS_ENV = "HPSEARCH_SCREENSHOTS"
WAIT_S = 60  # the first page load compiles the dashboard's bundle: seconds on 2 cores

pytestmark = pytest.mark.browser

from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from tests.conftest import skip_unless  # noqa: E402


@pytest.fixture(autouse=True)
def _needs_chromium() -> None:
    for program in (CHROMIUM, CHROMEDRIVER):
        skip_unless(program.exists(), f"{program} is not installed "
                    "(apt-get install -y chromium chromium-driver)")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless", "--no-sandbox", "--disable-gpu",
                     "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--no-first-run", "--window-size=1400,1100",
                     f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(argument)
    # The driver's path given: Selenium Manager must not try to download one.
    driver = webdriver.Chrome(service=webdriver.ChromeService(str(CHROMEDRIVER)),
                              options=options)
    yield driver
    driver.quit()


@pytest.fixture
def dashboard(small_study: tuple[str, str], tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(study page URL, study name): `hpsearch dashboard` on a copy of the small study."""
    url, name = small_study
    copy = tmp_path / "copy.db"
    with sqlite3.connect(url.removeprefix("sqlite:///")) as source, sqlite3.connect(copy) as to:
        source.backup(to)
    process = subprocess.Popen(
        [sys.executable, "-c", "from hpsearch.cli import main; main()", "dashboard",
         "--storage", f"sqlite:///{copy}", "--study", name, "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        process.stdout.readline()
        opened = process.stdout.readline()
        assert opened.startswith("Open http://"), opened + process.stderr.read()
        yield opened.split()[1], name
    finally:
        process.terminate()
        process.communicate(timeout=30)


def screenshot(driver, name: str, tmp_path: Path) -> Path:
    folder = Path(os.environ.get(SCREENSHOTS_ENV) or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000  # a rendered page, not a blank one
    return path


def page_text(driver) -> str:
    return driver.find_element(By.TAG_NAME, "body").text


def wait_for_text(driver, *texts: str) -> str:
    WebDriverWait(driver, WAIT_S).until(lambda d: all(t in page_text(d) for t in texts),
                                        message=f"the page never showed all of {texts}")
    return page_text(driver)


def test_the_study_page_shows_the_trials_the_figures_and_the_note(browser, dashboard, tmp_path):
    page, name = dashboard
    browser.get(f"{page}/trials")
    text = wait_for_text(browser, "16 Trials", "Trial 15")
    assert f"{name} (id=1)" in text and "Trial 0" in text

    browser.get(page)
    text = wait_for_text(browser, "History", "Learning rate per epoch: the best trial of each "
                         "scheduler", "Final validation loss by scheduler")
    assert f"{name} (id=1)" in text
    assert "Validation loss per epoch: the best trial of each scheduler" in text
    assert "Final validation loss by optimizer" in text
    # Our four figures sit below optuna's own: bring them into the picture.
    figures = browser.find_element(By.XPATH, "//*[name()='svg']//*[contains(text(), "
                                             "'Validation loss per epoch')]")
    browser.execute_script("arguments[0].closest('.js-plotly-plot')"
                           ".scrollIntoView({block: 'center'})", figures)
    screenshot(browser, "dashboard-figures.png", tmp_path)

    browser.get(f"{page}/note")
    text = wait_for_text(browser, f"hpsearch study {name}", "Which schedule wins")
    assert "Trials 16 finished:" in text
    assert "Which optimizer wins" in text
    assert "Notes written below this line are kept when hpsearch refreshes this note." in text
    screenshot(browser, "dashboard.png", tmp_path)
