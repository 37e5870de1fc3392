"""The playground page in headless Chromium (Debian's chromium + chromium-driver; nothing is downloaded)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from tests.needs import unavailable

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
SCREENSHOT_DIR = Path(os.environ.get("LORAKIT_SCREENSHOTS", Path(__file__).resolve().parents[2] / "build" / "screenshots"))

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="headless Chromium not installed: apt-get install -y chromium chromium-driver",
)


@pytest.fixture()
def browser():
    try:  # a dev dependency, so `make setup` always installs it: missing in CI is a failure
        from selenium import webdriver
    except ImportError as exc:
        unavailable(f"selenium not importable ({exc})", "make setup (pip install -c constraints.txt -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="lorakit-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    # root in a sandbox, no GPU, and no background network (the machine's network is closed)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", f"--user-data-dir={profile}", "--window-size=1280,900"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def test_prompt_streams_side_by_side_answers(browser, served):
    from selenium.webdriver.common.by import By

    browser.get(served["url"] + "/")
    deadline = time.monotonic() + 20
    while not browser.find_elements(By.CSS_SELECTOR, "#models input[data-model='a0']"):
        assert time.monotonic() < deadline, "model list never loaded"
        time.sleep(0.1)
    base = browser.find_element(By.CSS_SELECTOR, "#models input[data-model='tiny']")
    assert base.is_selected()
    browser.find_element(By.CSS_SELECTOR, "#models input[data-model='a0']").click()
    browser.find_element(By.ID, "max_tokens").clear()
    browser.find_element(By.ID, "max_tokens").send_keys("24")
    browser.find_element(By.ID, "prompt").send_keys("Say something about the sea.")
    browser.find_element(By.ID, "send").click()
    deadline = time.monotonic() + 60
    while len(browser.find_elements(By.CSS_SELECTOR, ".answer pre[data-done='1']")) < 2:
        assert time.monotonic() < deadline, "answers did not finish streaming"
        time.sleep(0.1)
    cards = browser.find_elements(By.CSS_SELECTOR, ".answer")
    texts = {c.get_attribute("data-model"): c.find_element(By.TAG_NAME, "pre").text for c in cards}
    assert set(texts) == {"tiny", "a0"}
    assert texts["tiny"] and texts["a0"] and texts["tiny"] != texts["a0"]
    # the streamed page shows what the API answers for the same request
    from openai import OpenAI

    client = OpenAI(base_url=served["url"] + "/v1", api_key="unused", max_retries=0)
    for model, shown in texts.items():
        resp = client.chat.completions.create(model=model, temperature=0, max_tokens=24, seed=0, top_p=1,
                                              messages=[{"role": "user", "content": "Say something about the sea."}])
        assert resp.choices[0].message.content.strip() == shown.strip()
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOT_DIR / "playground.png"))
