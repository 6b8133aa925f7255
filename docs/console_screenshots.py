"""The README's screenshots of the console, from a real job: ``python docs/console_screenshots.py``.

Starts ``simclr serve`` as ``make demo`` does (SQLite under ``.simclr/``, a local Ray head),
submits SimCLR on the bundled digits (``make demo``'s config) on 2 Ray Train workers with a
linear and a kNN evaluation of its last checkpoint, and saves the jobs table, the job's page
(while it runs and once it has ended) and the submit page showing a config error into
``docs/console-*.png``, and TensorBoard over the service's storage into ``docs/tensorboard.png``,
through headless Chromium (Debian's ``chromium`` and ``chromium-driver``). A few minutes on 2 CPU
cores.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.cli import read_config  # noqa: E402
from services.client import Client  # noqa: E402
from services.demo import (  # noqa: E402
    DEFAULT_CONFIG,
    STATE_DIR,
    start_service,
    stop_service,
    wait_ready,
)
from services.ray_head import free_port  # noqa: E402

DOCS = ROOT / "docs"


def browser() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--window-size=1400,900"):  # fmt: skip
        options.add_argument(argument)
    return webdriver.Chrome(
        options=options, service=webdriver.ChromeService("/usr/bin/chromedriver")
    )


def save(driver: webdriver.Chrome, name: str, settle: float = 3.0) -> None:
    """The whole page (the window stretched to its height), after its polls have drawn it."""
    time.sleep(settle)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, min(max(height, 600), 4000))
    time.sleep(0.5)
    driver.save_screenshot(str(DOCS / f"console-{name}.png"))
    driver.set_window_size(1400, 900)
    print(f"saved docs/console-{name}.png")


def tensorboard_screenshot(driver: webdriver.Chrome, job_id: str) -> None:
    """``tensorboard --logdir .simclr/runs``: the job's loss, learning rate and kNN curves."""
    port = free_port()
    board = subprocess.Popen(
        [str(Path(sys.executable).parent / "tensorboard"), "--logdir", str(STATE_DIR / "runs"),
         "--port", str(port), "--host", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(8)
        driver.set_window_size(1400, 1100)
        driver.get(f"http://127.0.0.1:{port}/#timeseries")
        time.sleep(10)
        for close in driver.find_elements(By.CSS_SELECTOR, "button[aria-label*='Close']"):
            if close.is_displayed():
                close.click()  # the settings pane
        for box, text in (("Filter runs", job_id), ("Filter tags", "^(loss|knn_top1|lr)$")):
            field = driver.find_element(By.CSS_SELECTOR, f"input[placeholder^='{box}']")
            field.send_keys(text, Keys.ESCAPE)  # Escape: no suggestions over the charts
        time.sleep(4)
        driver.save_screenshot(str(DOCS / "tensorboard.png"))
        driver.set_window_size(1400, 900)
        print("saved docs/tensorboard.png")
    finally:
        board.terminate()
        board.wait(30)


def main() -> None:
    port, dashboard_port = free_port(), free_port()
    service = start_service(port, dashboard_port, STATE_DIR / "screenshots.log")
    url = f"http://127.0.0.1:{port}"
    client = Client(url)
    driver = browser()
    try:
        wait_ready(client, service, STATE_DIR / "screenshots.log")
        config = read_config(str(DEFAULT_CONFIG))
        job = client.http.post("/v1/jobs", json={
            "kind": "simclr", "name": "digits, small CNN", "config": config,
            "resources": {"num_workers": 2},
            "evaluate": [{"at": "end", "protocol": "linear"}, {"at": "end", "protocol": "knn"}],
        }).json()  # fmt: skip
        page = f"{url}/ui/jobs/{job['id']}"
        while not [m for m in client.metrics(job["id"]) if m["name"] == "loss"][5:]:
            time.sleep(2)
        driver.get(f"{url}/ui/")
        save(driver, "jobs")
        driver.get(page)
        save(driver, "job-running")
        client.wait(job["id"])
        while any(e["status"] not in ("succeeded", "failed") for e in
                  client.http.get(f"/v1/jobs/{job['id']}/evaluations").json()):  # fmt: skip
            time.sleep(2)
        driver.get(f"{url}/ui/")
        save(driver, "jobs")
        driver.get(page)
        save(driver, "job")
        driver.get(f"{url}/ui/submit?kind=simclr")
        time.sleep(2)
        for field, value in (("config.dataset.name", "digits"), ("config.temperature", "-1")):
            box = driver.find_element(By.ID, f"f-{field}")
            box.clear()
            box.send_keys(value)
        driver.find_element(By.ID, "submit").click()
        time.sleep(1)
        driver.execute_script(
            "document.getElementById('f-config.temperature').scrollIntoView({block: 'center'})"
        )
        time.sleep(0.5)
        driver.save_screenshot(str(DOCS / "console-submit.png"))
        print("saved docs/console-submit.png")
        tensorboard_screenshot(driver, job["id"])
    finally:
        driver.quit()
        stop_service(service)


if __name__ == "__main__":
    main()
