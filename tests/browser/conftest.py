"""Browser fixtures: a real Chromium (Debian's, through Playwright) and a real server process.

`live_server` runs `flask run` in a subprocess against the same database and Redis as the test
process, so rows a test creates and commits through `db`/`world`/factories are what the browser
sees. Use `log_in(page, live_server, user)` to sign a page in as one of `world.users`.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests import factories

CHROMIUM = "/usr/bin/chromium"
AXE = Path(__file__).parent / "vendor" / "axe-4.14.1.min.js"  # see vendor/README.md
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ROOT = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.browser)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed browser test shows the tail of the live server's log beside the traceback."""
    outcome = yield
    report = outcome.get_result()
    server = item.funcargs.get("live_server") if hasattr(item, "funcargs") else None
    if report.failed and isinstance(server, LiveServer):
        report.sections.append(("live server log (tail)", "\n".join(server.output().splitlines()[-40:])))


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"browser tests need Chromium at {CHROMIUM} (make browser installs it)")
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        pytest.skip("browser tests need the playwright package (pip install -e '.[test]')")
    manager = sync_playwright().start()
    try:
        chromium = manager.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    except Error as exc:
        manager.stop()
        pytest.skip(f"Chromium at {CHROMIUM} could not start: {str(exc).splitlines()[0]}")
    yield chromium
    chromium.close()
    manager.stop()


@pytest.fixture()
def context(browser):
    """A fresh browser profile (no cookies) per test, at a desktop size."""
    ctx = browser.new_context(viewport={"width": 1600, "height": 1000})
    ctx.set_default_timeout(10_000)
    yield ctx
    ctx.close()


def is_csp_refusal(msg) -> bool:
    """A console message in which Chromium reports something the Content-Security-Policy refused
    (an inline style or script, an inline handler, a resource from elsewhere)."""
    return msg.type == "error" and ("Content Security Policy" in msg.text or "Content-Security-Policy" in msg.text)


def watch_for_script_errors(page) -> list[str]:
    """Collect uncaught script errors and Content-Security-Policy refusals on `page`: both mean a
    behaviour silently did not happen. (Failed loads such as a 409 are logged too, and not errors.)"""
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    page.on("console", lambda msg: errors.append(f"CSP: {msg.text}") if is_csp_refusal(msg) else None)
    return errors


_axe_source: str | None = None


def axe_violations(page, disable: tuple[str, ...] = ()) -> list[str]:
    """Run axe-core (WCAG 2.x A and AA, and best practices) on the page as it is now; one line per
    violation: rule, impact, what it means and the elements it found. Playwright evaluates the
    script outside the page's CSP, so the page needs no exception for it."""
    global _axe_source
    if _axe_source is None:
        _axe_source = AXE.read_text()
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.evaluate(_axe_source)
    result = page.evaluate(
        """async (disabled) => {
            const rules = Object.fromEntries(disabled.map((id) => [id, {enabled: false}]));
            const r = await axe.run(document, {resultTypes: ["violations"], rules});
            return r.violations.map((v) => ({id: v.id, impact: v.impact, help: v.help,
                nodes: v.nodes.slice(0, 5).map((n) => n.target.join(" ") + " :: " + n.failureSummary.replace(/\\s+/g, " "))}));
        }""", list(disable))
    return [f"{v['id']} ({v['impact']}): {v['help']}\n    " + "\n    ".join(v["nodes"]) for v in result]


@pytest.fixture()
def page(context):
    """A page whose uncaught script errors and CSP refusals fail the test."""
    page = context.new_page()
    errors = watch_for_script_errors(page)
    yield page
    assert not errors, "the page reported script errors:\n" + "\n".join(errors)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    def __init__(self, url: str, process: subprocess.Popen, log: Path):
        self.url = url
        self.process = process
        self.log = log

    def __call__(self, path: str = "/") -> str:
        return self.url + path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="session")
def live_server(app, tmp_path_factory):
    """`flask run` on a free loopback port, sharing the test process's database and Redis."""
    instance = tmp_path_factory.mktemp("live-instance")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLASK_", "LM_"))}
    env.update({
        "LM_ENV": "development",
        "LM_INSTANCE_DIR": str(instance),
        "SECRET_KEY": "browser-test-secret",
        "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
        "REDIS_URL": app.config["REDIS_URL"],
        "MAIL_BACKEND": "devmailbox",
        "RATELIMIT_STORAGE_URI": "memory://",
        "LOGIN_RATE_LIMIT": "1000 per minute",
        "BOARD_POLL_SECONDS": "1",
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "PYTHONUNBUFFERED": "1",
    })
    flask = shutil.which("flask", path=str(Path(sys.executable).parent)) or str(ROOT / ".venv/bin/flask")
    log = instance / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [flask, "--app", "wsgi", "run", "--host", "127.0.0.1", "--port", str(port),
             "--no-reload", "--no-debugger", "--with-threads"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = LiveServer(f"http://127.0.0.1:{port}", process, log)
    try:
        _wait_until_up(server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _wait_until_up(server: LiveServer, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"the live server exited ({server.process.returncode}):\n{server.output()}")
        try:
            httpx.get(server("/login"), timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    pytest.fail(f"the live server did not answer within {timeout:.0f} s:\n{server.output()}")


def log_in(page, live_server: LiveServer, user, path: str = "/") -> None:
    """Sign `page` in as `user` (one of world.users) through the real login form, then open `path`."""
    page.goto(live_server("/login"))
    page.fill("#email", user.email)
    page.fill("#password", factories.PASSWORD)
    with page.expect_navigation():
        page.locator("#password").press("Enter")
    assert "/login" not in page.url, f"login failed for {user.email}: {page.url}"
    if path != "/" or page.url.rstrip("/") != live_server.url:
        page.goto(live_server(path))


@pytest.fixture()
def signed_in(live_server):
    """`signed_in(page, user, path="/")`: the log_in helper with the live server filled in."""
    def _sign_in(page, user, path: str = "/"):
        log_in(page, live_server, user, path)
        return page
    return _sign_in
