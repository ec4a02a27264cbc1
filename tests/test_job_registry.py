"""The registry of jobs (portal/queue.py JOBS): every job is named once, with its options, and
every name in it is a function RQ can import."""
import ast
import importlib
import re
from pathlib import Path

from rq import Callback

from portal import queue

ROOT = Path(__file__).resolve().parents[1]


def _resolve(path: str):
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def test_every_job_and_failure_callback_in_the_registry_can_be_imported():
    assert queue.JOBS, "the registry is empty"
    for name, spec in queue.JOBS.items():
        assert spec.name == name
        assert callable(_resolve(spec.func)), spec.func
        assert spec.module.startswith("jobs."), f"{spec.func}: entry points live in jobs/"
        if spec.on_failure:
            assert callable(_resolve(spec.on_failure)), spec.on_failure


def test_options_come_from_the_spec_and_the_config(app):
    with app.app_context():
        options = queue.DELIVER_WORK_ORDER.options()
        assert options["job_timeout"] == queue.lab_api_job_timeout(app.config) > 4 * app.config["LAB_API_TIMEOUT"]
        assert isinstance(options["on_failure"], Callback) and options["result_ttl"] == 3600
        assert queue.SEND_MAIL.options()["retry"].max == len(app.config["MAIL_RETRY_INTERVALS"])
        assert queue.INSPECT_SCAN_FILE.options(job_timeout=42)["job_timeout"] == 42  # a call may override


def test_the_production_worker_preloads_every_module_of_the_registry():
    modules = queue.job_modules()
    assert {spec.module for spec in queue.JOBS.values()} <= set(modules)
JOB_PATH = re.compile(r"^jobs\.[a-z_]+\.[a-z_]+$")


def test_no_job_is_named_by_a_dotted_string_outside_the_registry():
    """portal/ names jobs through portal/queue.py's specs only (jobs/worker.py and `rq` command
    lines are not job names)."""
    found = []
    for path in sorted((ROOT / "portal").rglob("*.py")):
        if path == ROOT / "portal" / "queue.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and JOB_PATH.match(node.value):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value}")
    assert found == []
