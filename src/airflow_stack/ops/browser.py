"""A real headless browser on the stack's UI: Debian's chromium and chromium-driver (or the Mac's Chrome
and Homebrew's chromedriver), installed by `invoke setup.browser`, driven through Selenium (the
tooling's dev group; import this module only where it is needed).

Nothing downloads a browser build: Selenium Manager is kept offline (SE_OFFLINE) and is given both
paths. Used by the UI tests and by `invoke docs.screenshots`; every page the tests look at is saved
as a PNG in the directory given, so what was checked can be seen afterwards.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from ..apache_airflow import profiles
from ..services import tls
from ..settings import Settings


def pins_for(settings: Settings) -> tuple[str, ...]:
    """The stack's HTTPS (STACK_TLS, the API beyond loopback) for this headless browser on loopback, whose own
    store does not hold the stack's CA: the public key of the server certificate the web component presents
    (Chromium ignores certificate errors for a chain holding that key; made no stronger than that)."""
    return (tls.spki_pin(settings.paths.tls_server_cert),) if settings.api_tls else ()


class Browser:
    def __init__(self, binary: str, driver: str, shots: Path, width: int = 1400, height: int = 900,
                 pins: tuple[str, ...] = ()) -> None:
        os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager fetch a browser or a driver
        options = webdriver.ChromeOptions()
        options.binary_location = binary
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}",
                    # the stack is on loopback: a proxy the environment names must not carry the UI's traffic
                    "--no-proxy-server", "--disable-gpu", "--disable-extensions"):
            options.add_argument(arg)
        if pins:  # HTTPS with the stack's certificate: that key only (pins_for)
            options.add_argument(f"--ignore-certificate-errors-spki-list={','.join(pins)}")
        self.driver = webdriver.Chrome(service=Service(driver), options=options)
        self.shots = shots
        self.shots.mkdir(parents=True, exist_ok=True)
        self.count = 0

    def quit(self) -> None:
        self.driver.quit()

    # ---- basics ---------------------------------------------------------------------------
    def shot(self, name: str, numbered: bool = True) -> Path:
        """Save what the browser shows now (numbered in the order taken, unless told)."""
        self.count += 1
        path = self.shots / (f"{self.count:02d}-{name}.png" if numbered else f"{name}.png")
        self.driver.save_screenshot(str(path))
        return path

    def wait(self, condition: Callable[[Any], Any], timeout: float = 30, what: str = "") -> Any:
        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.2).until(condition)
        except TimeoutException:
            path = self.shot("timeout")
            raise AssertionError(f"the UI did not show {what or condition} within {timeout:.0f} s "
                                 f"(screenshot {path}; at {self.driver.current_url})") from None

    def text(self) -> str:
        try:
            return self.driver.find_element(By.TAG_NAME, "body").text
        except WebDriverException:
            return ""

    def wait_text(self, needle: str, timeout: float = 30) -> None:
        self.wait(lambda d: needle in self.text(), timeout, f"the text {needle!r}")

    def get(self, url: str) -> None:
        self.driver.get(url)

    # ---- Airflow's pages ----------------------------------------------------------------
    def login(self, base_url: str, line: str, user: str, password: str) -> int | None:
        """Fill in and send the login form (FAB's, on both lines). Returns the HTTP status shown when the
        answer is an error page (429 for the rate limit), else None."""
        self.get(base_url + profiles.get(line).rest.login_path)
        self.wait(ec.presence_of_element_located((By.ID, "username")), what="the login form")
        self.driver.find_element(By.ID, "username").clear()
        self.driver.find_element(By.ID, "username").send_keys(user)
        self.driver.find_element(By.ID, "password").send_keys(password)
        self.driver.find_element(By.CSS_SELECTOR, "input[type=submit], button[type=submit]").click()
        self.wait(lambda d: d.execute_script("return document.readyState") == "complete", what="the answer")
        time.sleep(0.3)
        body = self.text()
        if "Too Many Requests" in body or "429" in self.driver.title:
            return 429
        return None

    def logged_in(self) -> bool:
        """Past the login form (it is not shown any more)."""
        return not self.driver.find_elements(By.ID, "password")

    def trigger(self, base_url: str, ui: profiles.WebUI, dag_id: str) -> None:
        """Trigger ``dag_id`` as a person does on its page (unpausing it the way that UI offers)."""
        self.get(f"{base_url}/dags/{dag_id}/grid" if not ui.trigger_dialog else f"{base_url}/dags/{dag_id}")
        if ui.trigger_dialog:  # the dialog's "Unpause on trigger" is ticked by default
            opener = (By.CSS_SELECTOR, "button[aria-label='Trigger Dag']")
            self.wait(ec.element_to_be_clickable(opener), what="the Trigger button").click()
            self.wait(lambda d: [b for b in d.find_elements(By.XPATH, "//button[normalize-space()='Trigger']")
                                 if b.is_displayed() and b.get_attribute("aria-label") != "Trigger Dag"],
                      what="the dialog's Trigger button")[-1].click()
        else:
            toggle = self.wait(ec.presence_of_element_located((By.ID, "pause_resume")), what="the pause toggle")
            if not toggle.is_selected():  # ticked: active
                self.driver.execute_script("arguments[0].click()", toggle)
                self.wait(lambda d: d.find_element(By.ID, "pause_resume").is_selected(), what="the DAG unpaused")
            self.wait(ec.element_to_be_clickable((By.CSS_SELECTOR, "a[aria-label='Trigger DAG']")),
                      what="the Trigger DAG link").click()
        self.wait(lambda d: "run_id" in d.current_url or "Triggered" in self.text() or not d.find_elements(
            By.CSS_SELECTOR, "[role=dialog]"), what="the trigger to be sent")

    RUN_STATES = ("queued", "running", "success", "failed")

    def run_states(self, base_url: str, ui: profiles.WebUI, dag_id: str) -> list[str]:
        """The state of each run of ``dag_id`` as its runs page shows it now (one per table row)."""
        self.get(base_url + ui.dag_runs_path.format(dag_id=dag_id))
        try:
            self.wait(lambda d: "manual__" in self.text() or "No Dag Runs" in self.text()
                      or "No records found" in self.text() or "No Dag runs" in self.text(), 15, "the runs table")
        except AssertionError:
            return []
        states = []
        for row in self.driver.find_elements(By.CSS_SELECTOR, "tr"):
            text = row.text
            if "manual__" not in text:
                continue
            words = {word.strip().lower() for word in text.split()}
            states.append(next((state for state in self.RUN_STATES if state in words), "?"))
        return states

    def wait_runs(self, base_url: str, ui: profiles.WebUI, dag_id: str, want: list[str], timeout: float = 180) -> float:
        """Reload the runs page until it shows exactly ``want``; seconds it took."""
        began = time.monotonic()
        seen: list[str] = []
        while time.monotonic() - began < timeout:
            seen = self.run_states(base_url, ui, dag_id)
            if seen == want or any(state == "failed" for state in seen):
                break
            time.sleep(1.5)
        self.shot(f"{dag_id}-runs")
        assert seen == want, f"the UI shows the runs of {dag_id} as {seen}, not {want}"
        return time.monotonic() - began
