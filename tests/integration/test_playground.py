"""The playground (``GET /``) in a real browser: Debian's Chromium, headless, driven by Selenium.

One browser and the session's local stack serve every test here (Chromium costs
CPU on a 2-core machine); each test leaves a screenshot in
``test-artifacts/screenshots/`` at the top of the checkout (git ignores it).
``make browser`` (a step of ``make test`` and ``make integration``) installs
``chromium`` and ``chromium-driver`` with apt when they are missing.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests

from infra.images import build

from .helpers import ROOT, RunningStack

SHOTS = ROOT / "test-artifacts" / "screenshots"
DOWNLOADS = ROOT / "test-artifacts" / "downloads"
FINAL = ("terminated", "error", "cancelled")
WAIT_S = 90  # generous: CI is a loaded 2-core machine, and rust/java compile first
HELLO = "Hello, world!"
WINDOW = "--window-size=1280,1000"


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not chromedriver:
        pytest.fail(
            "Debian's chromium and chromium-driver are needed: `make browser` installs them (apt, as root)",
            pytrace=False,
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = chromium
    # --no-sandbox: Chromium's own sandbox refuses to start as root, which the tests run as.
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", WINDOW):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, shown when a wait fails
    DOWNLOADS.mkdir(parents=True, exist_ok=True)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(DOWNLOADS), "download.prompt_for_download": False}
    )
    log = tmp_path_factory.mktemp("chromedriver") / "chromedriver.log"
    # Both paths given: Selenium never looks for (or downloads) a driver or a browser of its own.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver, log_output=str(log)))
    driver.set_page_load_timeout(60)
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """The playground as a user sees it: a thin layer of waits over the browser."""

    def __init__(self, driver: Any, stack: RunningStack) -> None:
        self.driver = driver
        self.stack = stack
        self.url = stack.stack.api_url + "/"

    def by(self, element_id: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.ID, element_id)

    def until(self, what: Callable[[], Any], timeout: float = WAIT_S, message: str = "") -> Any:
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(lambda _: what(), message)
        except TimeoutException:
            console = "\n".join(e["message"] for e in self.driver.get_log("browser"))
            raise AssertionError(f"{message} within {timeout} s; the browser's console:\n{console}") from None

    def open(self, url: str | None = None) -> None:
        self.driver.get(url or self.url)
        self.until(lambda: self.driver.execute_script("return document.body.dataset.ready === '1'"), 60, "not ready")

    def sign_in(self, secret: str | None = None) -> None:
        self.by("app-id").clear()
        self.by("app-id").send_keys(self.stack.demo["app_id"])
        self.by("secret").send_keys(self.stack.demo["secret"] if secret is None else secret)
        self.by("sign-in-button").click()

    def signed_in(self) -> None:
        """A fresh page, signed in as the demo app."""
        self.open()
        if not self.by("main").is_displayed():
            self.sign_in()
        self.until(lambda: self.by("main").is_displayed() and self.options(), 60, "not signed in")

    def options(self) -> list[str]:
        return self.driver.execute_script("return [...document.getElementById('image').options].map(o => o.value)")

    def text(self, element_id: str) -> str:
        return str(self.driver.execute_script(f"return document.getElementById('{element_id}').textContent"))

    def status(self) -> str:
        return str(self.by("status").get_attribute("data-status"))

    def fact(self, name: str) -> str:
        return str(self.driver.execute_script(f"return document.querySelector('[data-fact=\"{name}\"]').textContent"))

    def set(self, element_id: str, value: str) -> None:
        element = self.by(element_id)
        element.clear()
        element.send_keys(value)

    def choose(self, image: str) -> None:
        from selenium.webdriver.support.ui import Select

        Select(self.by("image")).select_by_value(image)

    def settled(self, timeout: float = WAIT_S) -> str:
        try:
            self.until(lambda: self.status() in FINAL and self.by("run").is_enabled(), timeout, "the run to finish")
        except AssertionError as e:
            raise AssertionError(f"{e}\n(status {self.status()!r}, error {self.text('error')!r})") from None
        return self.status()

    def shot(self, name: str) -> Path:
        path = SHOTS / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path


@pytest.fixture
def page(browser: Any, stack: RunningStack) -> Page:
    return Page(browser, stack)


STAGE = "/api"  # API Gateway's stage name in .chalice/config.json: the page is at /api, the API under /api/api/


@pytest.fixture(scope="module")
def staged(stack: RunningStack) -> Iterator[str]:
    """The API behind a stage prefix, as API Gateway serves it: ``/api/x`` here is ``/x`` of ``chalice local``."""
    upstream = stack.stack.api_url
    hop = {"connection", "keep-alive", "transfer-encoding", "host", "content-length"}

    class Handler(BaseHTTPRequestHandler):
        def forward(self) -> None:
            path = self.path
            if path != STAGE and not path.startswith(STAGE + "/") and not path.startswith(STAGE + "?"):
                self.send_error(403, "outside the stage")  # API Gateway: "Missing Authentication Token"
                return
            length = int(self.headers.get("Content-Length") or 0)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in hop}
            answer = requests.request(
                self.command,
                upstream + (path[len(STAGE) :] or "/"),
                headers=headers,
                data=self.rfile.read(length) if length else None,
                allow_redirects=False,
                timeout=60,
            )
            try:
                self.send_response(answer.status_code)
                for name, value in answer.headers.items():
                    if name.lower() not in hop and name.lower() != "content-encoding":
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the browser left the page (the next test's navigation) while a call was under way

        do_GET = do_POST = do_DELETE = forward

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}{STAGE}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_wrong_secret_is_refused_as_the_api_words_it_and_the_right_one_signs_in(page: Page) -> None:
    from selenium.webdriver.common.keys import Keys

    page.open()
    page.driver.execute_script("sessionStorage.clear()")
    page.open()
    took = page.driver.execute_script("return performance.getEntriesByName('playground-ready')[0].startTime")

    page.sign_in(secret="not-the-secret")
    page.until(lambda: page.by("error").is_displayed(), 30, "no error shown")
    assert page.text("error") == "UnauthorizedError: unknown app id or wrong secret"
    assert not page.by("main").is_displayed()
    page.shot("sign-in-wrong-secret")

    page.set("secret", page.stack.demo["secret"] + Keys.ENTER)  # the keyboard signs in
    page.until(lambda: page.by("main").is_displayed() and page.options(), 60, "not signed in")
    assert not page.by("error").is_displayed()
    assert page.options() == sorted(i for i in page.stack.client.get("/api/images").json())

    ready = "return performance.getEntriesByName('playground-ready')[0].startTime"
    signed = []
    for _ in range(5):  # signed in, from session storage: the images and the ceilings load before ready
        page.open()
        signed.append(page.driver.execute_script(ready))
    print(
        f"time to interactive (navigation start to ready): sign-in form {took:.0f} ms, "
        f"signed in, images loaded {sorted(signed)[2]:.0f} ms (median of 5, {min(signed):.0f}-{max(signed):.0f})"
    )
    assert page.by("main").is_displayed()
    page.shot("signed-in")


def test_the_hello_world_of_each_catalogue_image_runs(page: Page) -> None:
    page.signed_in()
    catalogue = set(build.catalogue()) | {"base"}
    images = [name for name in page.options() if name in catalogue]
    assert "base" in images and "python" in images, images

    page.by("more").click()  # the limits: the longest time limit, so a compiler slowed by a loaded CI finishes
    page.set("limit-timeout", "60")
    for image in images:
        page.choose(image)
        assert HELLO in page.by("code").get_attribute("value"), f"{image}: no hello world in the editor"
        command = page.by("cmd").get_attribute("value")
        page.by("run").click()
        status = page.settled(WAIT_S * 2)
        page.shot(f"hello-{image}")
        said = f"{image} ({command}): {status}, {page.text('facts')!r}, {page.text('output')!r} {page.text('error')!r}"
        assert status == "terminated", said
        assert HELLO in page.text("output"), said
        assert page.text("stdout") == HELLO + "\n", said
        assert page.fact("return code") == "0", said

    # Readable on a phone: nothing wider than the screen.
    page.driver.set_window_size(390, 844)
    try:
        overflow = page.driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        page.shot("phone")
        assert overflow <= 0, f"the page is {overflow}px wider than a phone's screen"
    finally:
        page.driver.set_window_size(1280, 1000)


def test_a_line_printed_each_second_shows_before_the_program_ends(page: Page) -> None:
    from selenium.webdriver.common.keys import Keys

    page.signed_in()
    page.choose("python")
    program = "import time\nfor i in range(1, 9):\n    print(f'line {i}', flush=True)\n    time.sleep(1)\n"
    page.driver.execute_script("document.getElementById('code').value = arguments[0]", program)
    page.by("code").send_keys(Keys.CONTROL, Keys.ENTER)  # the keyboard runs it

    page.until(lambda: "line 1" in page.text("output"), 60, "the first line never showed")
    seen = page.text("output")
    still_running = not page.by("run").is_enabled() and page.status() not in FINAL
    page.shot("live-first-line")
    assert "line 8" not in seen, seen
    assert still_running
    assert page.settled() == "terminated"
    assert page.text("output") == "".join(f"line {i}\n" for i in range(1, 9))
    assert int(page.fact("duration").split()[0]) >= 7000


def test_a_flood_of_output_keeps_only_its_end_in_the_page(page: Page) -> None:
    page.signed_in()
    page.choose("python")
    program = "import sys\nfor i in range(1000):\n    sys.stdout.write(f'{i:05d}' + 'x' * 594 + '\\n')\n"
    page.driver.execute_script("document.getElementById('code').value = arguments[0]", program)
    page.by("more").click()
    page.set("limit-output_kb", "1024")
    page.by("run").click()
    assert page.settled() == "terminated", page.text("error")

    shown = page.text("output")
    assert len(shown) == 256 * 1024  # the live pane's cap, of the 600,000 characters written
    assert shown.endswith("00999" + "x" * 594 + "\n")
    assert page.by("output-cut").is_displayed()
    assert page.fact("return code") == "0"
    page.shot("flood")
    # 600 KB of stdout lives in storage: its download is a redirect there, which the page follows.
    run_id = page.text("status").split(" · ")[1]
    stored = page.stack.client.get(f"/api/sandboxes/{run_id}/stdout", allow_redirects=False)
    assert stored.status_code == 307, stored.status_code
    page.driver.execute_script("document.querySelector('#downloads button').click()")  # stdout
    saved = DOWNLOADS / f"{run_id}.stdout"
    page.until(saved.exists, 30, f"the stdout download never arrived ({page.text('error')!r})")
    assert saved.read_bytes() == page.stack.client.get(f"/api/sandboxes/{run_id}/stdout").content


def test_the_files_a_program_leaves_in_out_download_from_the_page(page: Page) -> None:
    page.signed_in()
    page.choose("python")
    program = (
        "import os\n"
        "os.makedirs('out/deep', exist_ok=True)\n"
        "open('out/deep/report.txt', 'w').write('made in the sandbox\\n')\n"
        "print('done')\n"
    )
    page.driver.execute_script("document.getElementById('code').value = arguments[0]", program)
    page.by("run").click()
    assert page.settled() == "terminated", page.text("error")
    page.until(lambda: "deep/report.txt" in page.text("downloads"), 30, "the artifact is not offered")
    saved = DOWNLOADS / "report.txt"
    saved.unlink(missing_ok=True)
    page.driver.execute_script(
        "[...document.querySelectorAll('#downloads button')]"
        ".find(b => b.textContent.startsWith('Download deep/report.txt')).click()"
    )
    page.until(saved.exists, 30, f"the artifact's download never arrived ({page.text('error')!r})")
    assert saved.read_bytes() == b"made in the sandbox\n"
    page.shot("artifacts")


def test_cancel_stops_a_running_program(page: Page) -> None:
    page.signed_in()
    page.choose("python")
    program = "import time\nprint('started', flush=True)\ntime.sleep(50)\nprint('never')\n"
    page.driver.execute_script("document.getElementById('code').value = arguments[0]", program)
    page.by("run").click()
    page.until(lambda: "started" in page.text("output"), 60, "the program never started")

    page.by("cancel").click()
    assert page.settled(60) == "cancelled"
    assert "never" not in page.text("output")
    page.shot("cancelled")


def test_a_bad_command_and_an_api_error_are_shown(page: Page) -> None:
    page.signed_in()
    page.choose("python")
    page.set("cmd", "no-such-command --please")
    page.by("run").click()
    assert page.settled() == "terminated"
    assert page.fact("return code") == "127"
    assert "not found" in page.text("stderr")
    page.shot("bad-command")
    run_id = page.text("status").split(" · ")[1]
    page.driver.execute_script("[...document.querySelectorAll('#downloads button')].at(-1).click()")  # stderr
    saved = DOWNLOADS / f"{run_id}.stderr"
    page.until(saved.exists, 30, "the stderr download never arrived")
    assert saved.read_bytes() == page.stack.client.get(f"/api/sandboxes/{run_id}/stderr").content

    page.by("more").click()  # stdin, environment, limits
    label = page.driver.execute_script("return document.getElementById('limit-timeout').parentElement.textContent")
    assert "≤ 60" in label  # the ceiling, from the API's own document
    page.set("limit-timeout", "9999")
    page.by("run").click()
    page.until(lambda: page.by("error").is_displayed(), 30, "no error shown")
    assert page.text("error").startswith("BadRequestError: timeout: "), page.text("error")
    assert "ceiling" in page.text("error")
    assert page.status() == "refused" and page.text("output") == page.text("error")  # beside the Run button too
    page.shot("api-error")


def test_history_reopens_a_run_with_its_files_command_and_result(page: Page) -> None:
    page.signed_in()
    page.choose("python")
    main = "import helper, os, sys\nprint(helper.GREETING, os.environ['WHO'], sys.stdin.read().strip())\n"
    page.driver.execute_script("document.getElementById('code').value = arguments[0]", main)
    page.by("more").click()
    page.set("stdin", "and stdin")
    page.set("env", "WHO=to env")
    page.by("file-add").click()
    prompt = page.driver.switch_to.alert
    prompt.send_keys("helper.py")
    prompt.accept()
    page.by("code").send_keys('GREETING = "hello from helper"\n')
    page.by("run").click()
    assert page.settled() == "terminated", page.text("error")
    assert page.text("stdout") == "hello from helper to env and stdin\n"
    run_id = page.text("status").split(" · ")[1]

    page.signed_in()  # a fresh page: nothing of that run in the editor
    assert "helper" not in page.by("code").get_attribute("value")
    item = f'#history-list button[data-id="{run_id}"]'
    page.until(lambda: page.driver.execute_script(f"return !!document.querySelector('{item}')"), 30, "not listed")
    first = page.driver.execute_script("return document.querySelector('#history-list button').dataset.id")
    assert first == run_id  # newest first
    page.driver.execute_script(f"document.querySelector('{item}').click()")

    expected = "hello from helper to env and stdin\n"
    page.until(lambda: page.text("stdout") == expected, 30, "the run's result was not shown")
    tabs = page.driver.execute_script("return [...document.querySelectorAll('#tabs button')].map(b => b.textContent)")
    assert tabs == ["main.py", "helper.py"]
    assert page.by("code").get_attribute("value") == main
    assert page.by("stdin").get_attribute("value") == "and stdin"
    assert page.by("env").get_attribute("value") == "WHO=to env"
    assert page.by("cmd").get_attribute("value") == "python3 main.py"
    assert page.status() == "terminated"
    page.shot("history-reopened")

    # A run made elsewhere (here, with curl's request) reopens with its command and result, and says
    # that this browser has no copy of its files.
    elsewhere = page.stack.client.submit(["echo from elsewhere"], {"x.txt": "x"}, image="python")
    page.stack.client.wait_done(elsewhere, 60)
    page.by("history-refresh").click()
    other = f'#history-list button[data-id="{elsewhere}"]'
    page.until(lambda: page.driver.execute_script(f"return !!document.querySelector('{other}')"), 30, "not listed")
    page.driver.execute_script(f"document.querySelector('{other}').click()")
    page.until(lambda: page.text("stdout") == "from elsewhere\n", 30, "the other run's result was not shown")
    assert page.by("cmd").get_attribute("value") == "echo from elsewhere"
    assert page.text("error") == (
        f"This browser did not keep the files of run {elsewhere} "
        "(the API returns a run's command, limits and output, not its files)"
    )

    # Paged: ten a page, the next behind "More".
    total = len(page.stack.client.get("/api/sandboxes", params={"limit": 100}).json()["sandboxes"])
    assert total > 10
    listed = "return document.querySelectorAll('#history-list li').length"
    assert page.driver.execute_script(listed) == 10
    page.by("history-more").click()
    page.until(lambda: page.driver.execute_script(listed) == min(total, 20), 30, "no second page")


def test_embed_mode_runs_one_snippet(page: Page) -> None:
    from selenium.webdriver.common.keys import Keys

    demo = page.stack.demo
    code = quote("print(6 * 7)\n")
    page.open(f"{page.url}?embed=1#app={demo['app_id']}&key={quote(demo['secret'])}&image=python&code={code}")

    assert not page.by("bar").is_displayed() and not page.by("history").is_displayed()
    assert page.by("code").get_attribute("value") == "print(6 * 7)\n"
    page.by("code").send_keys(Keys.CONTROL, Keys.ENTER)
    assert page.settled() == "terminated", page.text("error")
    assert page.text("stdout") == "42\n"
    page.shot("embed")


def test_behind_a_stage_prefix_the_page_calls_the_api_relative_to_itself(page: Page, staged: str) -> None:
    page.open(staged)  # no trailing slash, as API Gateway also serves a stage's root
    page.sign_in()
    page.until(lambda: page.by("main").is_displayed() and page.options(), 60, "not signed in behind the prefix")
    page.choose("python")
    page.by("run").click()
    assert page.settled() == "terminated", page.text("error")
    assert page.text("stdout") == HELLO + "\n"
    page.shot("stage-prefix")
