"""The dashboard end to end in a real headless browser (Debian's chromium + chromedriver, driven
by Selenium) against `ltxq web` on 127.0.0.1 and a real daemon training the tiny model:
submit from the form -> the job appears -> its progress moves without a reload -> the loss
chart has points -> a validation video plays -> cancel from the page -> the row says cancelled.
A screenshot of each page goes to $LTXQ_SCREENSHOTS (docs/screenshots for the README) or the
test's folder. Skips when chromium is missing, unless LTXQ_REQUIRE_BROWSER=1 (CI).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Env, wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
MISSING = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
if MISSING and os.environ.get("LTXQ_REQUIRE_BROWSER") != "1":
    pytest.skip(f"no {' or '.join(MISSING)}: apt-get install chromium chromium-driver "
                "(scripts/setup does, as root)", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver")

from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def browser(download_dir: Path):
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--autoplay-policy=no-user-gesture-required",
                "--mute-audio"):
        options.add_argument(arg)
    service = webdriver.ChromeService(executable_path=str(CHROMEDRIVER))
    return webdriver.Chrome(options=options, service=service)


@pytest.fixture
def served(tmp_path: Path):
    """A real daemon (tiny model) and `ltxq web` on a free port, both stopped at the end."""
    env = Env(tmp_path)
    env.env["LTXQ_CACHE"] = str(tmp_path / "cache")
    from ltxq.trainer.demo_data import write_demo_dataset

    write_demo_dataset(tmp_path / "datasets" / "demo", clips=2, width=48, height=40, frames=10)
    port = free_port()
    daemon = subprocess.Popen([sys.executable, "-m", "ltxq", "daemon", "--poll", "0.2",
                               "--device", "cpu"], cwd=tmp_path, env=env.env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    web = subprocess.Popen([sys.executable, "-m", "ltxq", "web", "--port", str(port),
                            "--datasets", "datasets"], cwd=tmp_path, env=env.env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            assert web.poll() is None, web.stdout.read()
            return False

    wait_for(up, 60, "ltxq web to listen")
    env.url = url
    yield env
    for p in (web, daemon):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in (web, daemon):
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()


def shot(driver, name: str, fallback: Path) -> None:
    folder = Path(os.environ.get("LTXQ_SCREENSHOTS") or fallback)
    folder.mkdir(parents=True, exist_ok=True)
    # The whole page (up to 3,000 px), not only the window: the job page's videos are below.
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, min(max(int(height), 1000), 3000))
    try:
        driver.save_screenshot(str(folder / f"{name}.png"))
    finally:
        driver.set_window_size(1400, 1000)


def fill(driver, key: str, value: str) -> None:
    field = driver.find_element(By.ID, f"f-{key}")
    field.clear()
    field.send_keys(value)


def click(driver, element_id: str, timeout: float = 10.0) -> None:
    """Click #ELEMENT_ID, finding it again if a live refresh swapped it between find and click."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            driver.find_element(By.ID, element_id).click()
            return
        except StaleElementReferenceException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def text_of(driver, css: str) -> str:
    # One script call: htmx may swap the element between a find and a read.
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.textContent.trim() : ''",
        css)


def test_submit_watch_play_cancel_in_a_browser(served, tmp_path):
    env, url = served, served.url
    driver = browser(tmp_path)
    try:
        # Submit from the form: a grid of two learning rates on the demo dataset.
        driver.get(f"{url}/submit")
        Select(driver.find_element(By.ID, "dataset")).select_by_value("demo")
        for key, value in {"model.source": "tiny-random", "data.resolution": "32x32x9",
                           "lora.rank": "4", "optimization.steps": "100000",
                           "optimization.learning_rate": "1e-3,2e-3",
                           "validation.interval": "10", "validation.inference_steps": "2",
                           "validation.video": "32x32x9", "checkpoints.interval": "0",
                           "job.name": "browser <b>test</b>"}.items():
            fill(driver, key, value)
        fill(driver, "validation.prompts", "a red square moving")
        driver.execute_script("window.scrollTo(0, 0)")
        shot(driver, "submit", tmp_path)
        click(driver, "submit-button")

        # The job appears in the queue; its progress moves without a reload.
        wait_for(lambda: driver.current_url.startswith(f"{url}/?submitted="), 20, "redirect")
        first, second = (int(i) for i in driver.current_url.split("=")[1].split(","))
        row = f"#job-{first}"
        wait_for(lambda: text_of(driver, row), 10, "the row")
        assert "browser <b>test</b>" in text_of(driver, f"{row} .name")
        driver.execute_script("window.notReloaded = true")
        steps = wait_for(lambda: text_of(driver, f"{row} .steps"), 120, "progress")
        wait_for(lambda: text_of(driver, f"{row} .steps") not in ("", steps), 60,
                 "the progress to move")
        assert driver.execute_script("return window.notReloaded") is True
        shot(driver, "queue", tmp_path)

        # Typing a priority is not wiped by the live refreshes; Enter sets it.
        field = driver.find_element(By.CSS_SELECTOR, f"#job-{second} input[name=priority]")
        field.clear()
        field.send_keys("7")
        time.sleep(2)  # several refreshes are due meanwhile
        assert field.get_attribute("value") == "7"
        field.send_keys(Keys.ENTER)
        wait_for(lambda: env.job(second)["priority"] == 7, 20, "the priority to be set")
        wait_for(lambda: "priority 7" in text_of(driver, "#flash"), 10, "the message")

        # A submit from a shell shows up without a reload (pushed over SSE).
        env.config("shell.toml", dataset="datasets/demo", steps=3)
        third = env.submit("shell.toml", "--name", "from a shell")
        wait_for(lambda: "from a shell" in text_of(driver, f"#job-{third} .name"), 10,
                 "the shell's job to appear")
        assert driver.execute_script("return window.notReloaded") is True

        # The job page: the loss chart has points; a validation video plays.
        driver.get(f"{url}/jobs/{first}")
        wait_for(lambda: int(driver.find_element(By.ID, "loss-chart")
                             .get_attribute("data-points") or 0) > 0, 60, "chart points")
        wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#samples video"), 120,
                 "a validation video")
        play = ("const v = document.querySelector('#samples video'); v.muted = true; "
                "v.play().catch(() => {}); return [v.readyState, v.error && v.error.code];")
        wait_for(lambda: driver.execute_script(play)[0] >= 2, 30,
                 "the video to have data (readyState >= 2)")
        points = int(driver.find_element(By.ID, "loss-chart").get_attribute("data-points"))
        log_at = int(driver.find_element(By.ID, "log").get_attribute("data-offset"))
        wait_for(lambda: int(driver.find_element(By.ID, "loss-chart")
                             .get_attribute("data-points")) > points, 60,
                 "the chart to grow live")
        wait_for(lambda: int(driver.find_element(By.ID, "log").get_attribute("data-offset"))
                 > log_at, 30, "the log to follow live")
        shot(driver, "job", tmp_path)

        # Cancel from the page; the queue row says cancelled.
        click(driver, "cancel-job")
        wait_for(lambda: "stopping" in text_of(driver, "#flash"), 10, "the cancel message")
        driver.get(url)
        wait_for(lambda: text_of(driver, f"#job-{first} .badge") == "cancelled", 90,
                 "the row to say cancelled")

        # Tick two rows (live refreshes keep the ticks) and compare them.
        for job in (first, second):
            click(driver, f"cmp-{job}")
            time.sleep(1)
        click(driver, "compare-button")
        wait_for(lambda: "/compare?" in driver.current_url, 10, "the compare page")
        assert f"jobs={first}" in driver.current_url and f"jobs={second}" in driver.current_url
        wait_for(lambda: driver.find_element(By.ID, "compare-chart")
                 .get_attribute("data-points"), 30, "the compare chart")
        assert "optimization.learning_rate" in driver.page_source
        shot(driver, "compare", tmp_path)
        driver.get(f"{url}/datasets")
        shot(driver, "datasets", tmp_path)
        driver.get(f"{url}/datasets/demo")
        shot(driver, "dataset", tmp_path)
    finally:
        driver.quit()

    out = Path(env.job(first)["output_dir"])
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").open()]
    assert steps == sorted(set(steps)) and steps[0] == 1
    assert (out / "samples.jsonl").read_text().count('"prompt_index": 0') >= 1

