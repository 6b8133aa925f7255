"""The web console in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven by selenium; nothing is downloaded) against the API served by uvicorn
with its reconciler on and a token set. Ray is replaced by a dispatcher whose Ray state the test
sets; the job's reports come through the internal endpoints with the job's token, as its workers
send them. Without the browser these tests are skipped, saying so (``.ci/run`` installs it). The
README's screenshots come from a real job: ``docs/console_screenshots.py``."""

from __future__ import annotations

import io
import math
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from PIL import Image

from services.app import create_app
from services.auth import job_token
from services.dispatcher import NoopDispatcher, RayJobState
from services.ray_head import free_port
from services.settings import Settings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="no Chromium and ChromeDriver: apt-get install chromium chromium-driver",
)
from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

TOKEN = "console-test-token"
TOKEN_KEY = "simclr-api-token"  # the console's sessionStorage key
INTERNAL = "console-internal-secret"
DIGITS = {"dataset": {"name": "digits"}, "backbone": {"name": "small_cnn"}, "max_steps": 2000}


class ScriptedDispatcher(NoopDispatcher):
    """Ray as the test says: every submission runs until ``finish`` gives it another state."""

    def __init__(self) -> None:
        super().__init__()
        self.states: dict[str, str] = {}

    def finish(self, submission_id: str, state: str) -> None:
        self.states[submission_id] = state

    def state(self, submission_id: str) -> RayJobState:
        if submission_id in self.stopped:
            return RayJobState("stopped")
        return RayJobState(self.states.get(submission_id, "running"))

    def logs(self, submission_id: str) -> str:
        return "".join(f"{submission_id}: step {i} loss {4 / (i + 1):.3f}\n" for i in range(50))


class Console:
    """The API on a loopback port, an HTTP client with the token, and the dispatcher."""

    def __init__(self, root: Path):
        (root / "data").mkdir()
        settings = Settings(
            database_url=f"sqlite:///{root / 'simclr.db'}", storage_path=str(root / "runs"),
            data_roots=[str(root / "data")], internal_token=INTERNAL, api_token=TOKEN,
            reconcile_interval_s=0.2,
        )  # fmt: skip
        self.dispatcher = ScriptedDispatcher()
        self.url = f"http://127.0.0.1:{free_port()}"
        port = int(self.url.rsplit(":", 1)[1])
        self.app = create_app(settings, self.dispatcher)
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.05)
        # a connection per request: none kept alive for the server to close as one goes out
        self.api = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {TOKEN}"},
                                limits=httpx.Limits(max_keepalive_connections=0))  # fmt: skip

    def submit(self, name: str, config: dict | None = None) -> dict:
        response = self.api.post("/v1/jobs", json={"kind": "simclr", "config": config or DIGITS,
                                                   "name": name, "resources": {"num_workers": 2}})  # fmt: skip
        assert response.status_code == 202, response.text
        return response.json()

    def report(self, job_id: str, path: str, headers: dict | None = None, **request) -> None:
        """What the job's rank 0 sends (``trainer.reporter``), with the job's own token."""
        headers = {**(headers or {}), "Authorization": f"Bearer {job_token(INTERNAL, job_id)}"}
        response = httpx.request(url=f"{self.url}/internal/v1/jobs/{job_id}/{path}",
                                 headers=headers, **request)  # fmt: skip
        assert response.status_code < 300, response.text

    def wait_status(self, job_id: str, status: str) -> None:
        deadline = time.monotonic() + 20
        while self.api.get(f"/v1/jobs/{job_id}").json()["status"] != status:
            assert time.monotonic() < deadline, f"job {job_id} never became {status}"
            time.sleep(0.1)

    def close(self) -> None:
        self.api.close()
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture
def console(tmp_path):
    served = Console(tmp_path)
    yield served
    served.close()


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1400,1000", "--disable-extensions"):  # fmt: skip
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
    yield driver
    driver.quit()


@pytest.fixture(autouse=True)
def _no_policy_violations(browser):
    """Nothing a page does is blocked by its Content-Security-Policy (Chromium logs each block)."""
    browser.get_log("browser")  # what earlier tests left
    yield
    blocked = [
        e["message"]
        for e in browser.get_log("browser")
        if "Content Security Policy" in e["message"]
    ]
    assert not blocked, blocked


def sign_in(browser, console: Console, page: str = "/ui/") -> None:
    """Open ``page`` as a new tab would (no token), then enter the token in the prompt."""
    browser.get(f"{console.url}/ui/")
    browser.execute_script("sessionStorage.clear()")
    browser.get(f"{console.url}{page}")
    wait(browser, lambda b: b.find_elements(By.ID, "token"))
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, "#sign-in button").click()
    wait(browser, lambda b: not b.find_elements(By.ID, "sign-in"))


def wait(browser, condition, timeout: float = 20):
    try:
        # the pages redraw what they poll: an element may be replaced between two reads
        ignored = (NoSuchElementException, StaleElementReferenceException)
        return WebDriverWait(browser, timeout, 0.1, ignored).until(condition)
    except TimeoutException:
        raise AssertionError(
            f"timed out at {browser.current_url}; the page says:\n"
            f"{browser.find_element(By.TAG_NAME, 'body').text[:2000]}"
        ) from None


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (40, 110, 220)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_without_the_token_the_pages_show_a_sign_in_prompt_and_no_data(browser, console):
    job = console.submit("secret digits run")
    for page in ("/ui/", f"/ui/jobs/{job['id']}", "/ui/submit"):
        browser.get(f"{console.url}/ui/")
        browser.execute_script("sessionStorage.clear()")
        browser.get(f"{console.url}{page}")
        wait(browser, lambda b: b.find_elements(By.ID, "sign-in"))
        text = browser.find_element(By.TAG_NAME, "body").text
        assert "Sign in" in text and job["id"] not in text and "secret digits run" not in text
        assert TOKEN not in browser.current_url
    # a wrong token is refused and the prompt says so; the right one shows the data
    browser.find_element(By.ID, "token").send_keys("not-the-token")
    browser.find_element(By.CSS_SELECTOR, "#sign-in button").click()
    wait(browser, lambda b: "refused this token" in b.find_element(By.ID, "sign-in").text)
    sign_in(browser, console)
    wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, f'tr[data-job="{job["id"]}"]'))
    # the token lives in the tab's sessionStorage only: no cookie, never in the address
    assert browser.get_cookies() == [] and TOKEN not in browser.current_url
    assert browser.execute_script(f"return sessionStorage.getItem('{TOKEN_KEY}')") == TOKEN


def test_the_jobs_table_follows_a_job_without_a_reload(browser, console):
    job = console.submit("digits table")
    sign_in(browser, console)
    row = f'tr[data-job="{job["id"]}"]'
    status = f"{row} [data-status]"
    wait(browser, lambda b: b.find_element(By.CSS_SELECTOR, status).text == "running")
    browser.execute_script("window.notReloaded = true")
    console.report(job["id"], "metrics", method="POST", json={"points": [
        {"step": 500, "epoch": 1, "name": "loss", "value": 3.25},
        {"step": 500, "epoch": 1, "name": "total_steps", "value": 2000},
    ]})  # fmt: skip
    wait(browser, lambda b: "500 / 2000" in b.find_element(By.CSS_SELECTOR, row).text)
    wait(browser, lambda b: "3.25" in b.find_element(By.CSS_SELECTOR, row).text)
    console.dispatcher.finish(job["attempts"][0]["submission_id"], "succeeded")
    wait(browser, lambda b: b.find_element(By.CSS_SELECTOR, status).text == "succeeded")
    assert browser.execute_script("return window.notReloaded") is True
    # the filters: a status filter that excludes it hides it
    browser.get(f"{console.url}/ui/?status=failed")
    wait(browser, lambda b: "no jobs" in b.find_element(By.ID, "jobs").text)


def test_a_jobs_page_draws_its_curves_artifacts_log_and_cancels(browser, console):
    job = console.submit("digits page")
    console.wait_status(job["id"], "running")
    # 1,500 loss points: the page asks for 1,000 a metric, which the server picks
    points = [{"step": s, "epoch": s // 100, "name": name, "value": value}
              for s in range(1, 1501)
              for name, value in (("loss", 5 * math.exp(-s / 400) + 0.1), ("lr", s / 1500))]  # fmt: skip
    points[700] = {**points[700], "value": "NaN"}
    console.report(job["id"], "metrics", method="POST", json={"points": points})
    console.report(job["id"], "artifacts/views.png", method="PUT", content=png(320, 160),
                   headers={"Content-Type": "image/png"})  # fmt: skip
    sign_in(browser, console, f"/ui/jobs/{job['id']}")
    wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, '.chart[data-metric="loss"]'))
    for name in ("loss", "lr"):
        served = console.api.get(
            f"/v1/jobs/{job['id']}/metrics", params={"name": name, "max_points": 1000}
        ).json()
        finite = [p for p in served if isinstance(p["value"], float | int)]
        assert 0 < len(finite) <= 1000
        # read in one script: the chart is redrawn every 2 s
        stated, drawn = browser.execute_script(
            "const chart = document.querySelector(arguments[0]);"
            "return [chart.dataset.points,"
            "        chart.querySelector('polyline').getAttribute('points').split(' ').length];",
            f'.chart[data-metric="{name}"]',
        )
        assert int(stated) == drawn == len(finite)
    picture = 'figure[data-artifact="views.png"] img'
    wait(browser, lambda b: b.execute_script(
        "const img = document.querySelector(arguments[0]); return img && img.naturalWidth", picture
    ) == 320)  # fmt: skip
    wait(browser, lambda b: "step 49 loss" in b.find_element(By.ID, "log").text)
    browser.find_element(By.ID, "cancel").click()
    alert = browser.switch_to.alert
    assert job["id"] in alert.text
    alert.accept()
    wait(browser, lambda b: b.find_element(By.CSS_SELECTOR, "#job-header [data-status]").text
         in ("cancelling", "cancelled"))  # fmt: skip
    console.wait_status(job["id"], "cancelled")
    wait(browser, lambda b: b.find_elements(By.ID, "retry"))


def test_the_submit_page_shows_a_config_error_beside_its_field_then_submits(browser, console):
    sign_in(browser, console, "/ui/submit?kind=simclr")
    wait(browser, lambda b: b.find_elements(By.ID, "f-config.temperature"))
    # prefilled with the kind's defaults as the API states them
    defaults = next(k for k in console.api.get("/v1/kinds").json() if k["name"] == "simclr")
    temperature = browser.find_element(By.ID, "f-config.temperature")
    assert float(temperature.get_attribute("value")) == defaults["defaults"]["temperature"]

    def enter(field: str, value: str) -> None:
        box = browser.find_element(By.ID, f"f-{field}")
        box.clear()
        box.send_keys(value)

    enter("config.dataset.name", "digits")
    enter("config.backbone.name", "small_cnn")
    beside = '.field[data-field="{}"] .field-error'

    def error_beside(field: str) -> str:
        return browser.find_element(By.CSS_SELECTOR, beside.format(field)).text

    enter("config.temperature", "-1")
    browser.find_element(By.ID, "submit").click()
    wait(browser, lambda b: error_beside("config.temperature"))
    assert "greater than 0" in error_beside("config.temperature")
    assert error_beside("config.epochs") == "" and error_beside("resources.num_workers") == ""
    enter("config.temperature", "0.2")
    enter("resources.num_workers", "0")
    browser.find_element(By.ID, "submit").click()
    wait(browser, lambda b: error_beside("resources.num_workers"))
    assert error_beside("config.temperature") == ""  # the earlier error is gone
    assert console.api.get("/v1/jobs").json()["items"] == []
    enter("resources.num_workers", "2")
    enter("config.max_steps", "3")
    enter("idempotency_key", "console-submit-1")
    browser.find_element(By.ID, "submit").click()
    wait(browser, lambda b: "/ui/jobs/" in b.current_url)
    [job] = console.api.get("/v1/jobs").json()["items"]
    assert browser.current_url.endswith(job["id"])
    assert job["config"]["temperature"] == 0.2 and job["config"]["dataset"]["name"] == "digits"
    assert job["config"]["max_steps"] == 3 and job["resources"]["num_workers"] == 2


def test_errors_of_a_whole_config_or_of_a_unions_alternatives_go_above_the_form(browser, console):
    """A generative kind's ``data`` is an image set or a toy density: pydantic answers for both
    alternatives, and neither answer is one row's (the form shows the image set's fields)."""
    sign_in(browser, console, "/ui/submit?kind=ddpm")
    wait(browser, lambda b: b.find_elements(By.ID, "f-config.data.max_side"))
    box = browser.find_element(By.ID, "f-config.data.max_side")
    box.clear()
    box.send_keys("many")
    browser.find_element(By.ID, "submit").click()
    wait(browser, lambda b: b.find_element(By.ID, "general-errors").text)
    general = browser.find_element(By.ID, "general-errors").text
    assert "config.data" in general and "max_side" in general
    assert browser.find_elements(By.CSS_SELECTOR, ".field.invalid") == []
    assert console.api.get("/v1/jobs").json()["items"] == []


def test_the_jobs_table_pages_through_a_thousand_jobs(browser, console):
    store = console.app.state.service.store
    for i in range(1000):
        store.create_job(kind="simclr", name=f"bulk {i:04d}", config=DIGITS,
                         resources={"num_workers": 1}, max_attempts=1)  # fmt: skip
    sign_in(browser, console)

    def page() -> list[str]:
        return browser.execute_script(
            "return [...document.querySelectorAll('tr[data-job]')].map((r) => r.dataset.job)"
        )

    wait(browser, lambda b: len(page()) == 50)
    newest = page()
    browser.find_element(By.ID, "older").click()
    wait(browser, lambda b: "cursor=" in b.current_url and len(page()) == 50 and page() != newest)
    older = page()
    assert not set(newest) & set(older)
    listed = console.api.get("/v1/jobs", params={"limit": 100}).json()["items"]
    assert [job["id"] for job in listed] == newest + older  # the API's order, page after page
    browser.find_element(By.ID, "newer").click()
    wait(browser, lambda b: page() == newest)
