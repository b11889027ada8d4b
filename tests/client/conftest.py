"""The API as production serves it, for the client and ``gpb``: gunicorn (config/gunicorn.conf.py,
two sync workers) on the test database, with tasks sent through Redis to the suite's real Celery
worker, so a compute request fills through the matching engine as it would in production."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from django.conf import settings

from tests.conftest import _worker_database_url, requires_worker, stop_process

ROOT = Path(__file__).resolve().parent.parent.parent
GPB = Path(sys.executable).parent / "gpb"

pytestmark = requires_worker


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def api_server(celery_worker_process, django_db_setup, django_db_blocker, tmp_path_factory):
    """The base URL of a gunicorn serving the test database; tasks go to the real worker."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("gunicorn") / "gunicorn.log"
    env = os.environ | {
        "DATABASE_URL": _worker_database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "API_RATE_LIMIT": "none",
        "API_AUTH_FAILURE_RATE_LIMIT": "none",
        "WEBHOOK_ALLOW_LOOPBACK": "true",
        "LOG_LEVEL": "WARNING",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "gunicorn"), "-c", "config/gunicorn.conf.py", "config.wsgi",
             "--bind", f"127.0.0.1:{port}", "--workers", "2", "--timeout", "120"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            pytest.fail(f"gunicorn exited:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                stop_process(process)
                pytest.fail(f"gunicorn did not answer within 60 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
    try:
        yield url
    finally:
        stop_process(process)
        # A traceback in the server's log is a 500 somewhere: no test may pass over one.
        text = log_path.read_text()
        assert "Traceback" not in text, text[-5000:]


@pytest.fixture
def live_api(api_server, real_worker):
    """The served API on a database this test's transaction does not hide."""
    return api_server


@pytest.fixture
def config_home(tmp_path, monkeypatch):
    """A home of its own for the config file, with no key or URL in the environment."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    for name in ("GPUBROKER_API_KEY", "GPUBROKER_URL", "GPUBROKER_CONFIG", "GPUBROKER_WEBHOOK_SECRET"):
        monkeypatch.delenv(name, raising=False)
    return home


class Gpb:
    """``gpb`` as one organization, through click's runner (in this process) or as a subprocess."""

    def __init__(self, url: str, key: str, home: Path):
        self.url, self.key, self.home = url, key, home

    def env(self, url: bool = True) -> dict[str, str]:
        """The URL and key in the environment (none when the key is empty: the config file has it)."""
        return ({"GPUBROKER_URL": self.url} if url else {}) | ({"GPUBROKER_API_KEY": self.key} if self.key else {})

    def __call__(self, *args: str, code: int = 0, input: str | None = None):  # noqa: A002
        """Run ``gpb ARGS`` through the runner; check the exit code; the result."""
        from gpubroker.cli import State, cli

        result = CliRunner().invoke(cli, list(args), env=self.env(), obj=State(None, None, False), input=input,
                                    catch_exceptions=False)  # fmt: skip
        assert result.exit_code == code, (args, result.exit_code, result.output, result.stderr)
        return result

    def json(self, *args: str, code: int = 0):
        return json.loads(self("--json", *args, code=code).stdout)

    def run(self, *args: str, code: int | None = 0, env_url: bool = True, **kwargs) -> subprocess.CompletedProcess:
        """Run ``gpb ARGS`` as a subprocess, with this home; check the exit code."""
        env = os.environ | {"HOME": str(self.home), "XDG_CONFIG_HOME": str(self.home / ".config")}
        env = {name: value for name, value in env.items() if not name.startswith("GPUBROKER_")} | self.env(env_url)
        result = subprocess.run([str(GPB), *args], env=env, capture_output=True, text=True, timeout=120, **kwargs)
        if code is not None:
            assert result.returncode == code, (args, result.returncode, result.stdout, result.stderr)
        return result

    def popen(self, *args: str) -> subprocess.Popen:
        env = os.environ | {"HOME": str(self.home), "XDG_CONFIG_HOME": str(self.home / ".config")} | self.env()
        return subprocess.Popen([str(GPB), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def as_org(live_api, config_home):
    """``as_org(name, role)``: a new organization and its ``gpb``."""
    from marketplace.services import organization_create

    def make(name: str, role: str) -> Gpb:
        organization, issued = organization_create(name=name, role=role)
        gpb = Gpb(live_api, issued.secret, config_home)
        gpb.organization = organization
        return gpb

    return make
