"""Fixtures for the endpoint tests: a RabbitMQ broker for the real endpoint process (the
service's stand-in is :mod:`gc_standin`)."""

from __future__ import annotations

import os
import pathlib
import subprocess
from collections.abc import Iterator

import pytest

_RABBITMQ_SCRIPT = (
    pathlib.Path(__file__).resolve().parents[2] / "tools" / "rabbitmq" / "rabbitmq.sh"
)


def _amqp_url_up(url: str) -> bool:
    import pika

    try:
        pika.BlockingConnection(pika.URLParameters(url)).close()
    except Exception:
        return False
    return True


def _rabbitmq_sh(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(_RABBITMQ_SCRIPT), command], capture_output=True, text=True, timeout=180
    )


def _exported_url(stdout: str) -> str:
    for line in stdout.splitlines():
        if line.startswith("export SCOPEFX_AMQP_URL="):
            return line.split("=", 1)[1].strip()
    return ""


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """The URL of a running RabbitMQ: ``$SCOPEFX_AMQP_URL``, or one started here with
    tools/rabbitmq/rabbitmq.sh (and stopped at the end). Where RabbitMQ is not installed the
    test is skipped, unless SCOPEFX_REQUIRE_RABBITMQ=1 (set by CI) makes that a failure."""
    pytest.importorskip("pika")
    url = os.environ.get("SCOPEFX_AMQP_URL", "")
    started, why = False, ""
    if not (url and _amqp_url_up(url)):
        status = _rabbitmq_sh("status")  # one this script started earlier: use, keep
        url = _exported_url(status.stdout) if status.returncode == 0 else ""
    if not (url and _amqp_url_up(url)):
        run = _rabbitmq_sh("start")
        if run.returncode == 0:
            started = "PYTEST_XDIST_WORKER" not in os.environ
            url = _exported_url(run.stdout)
        else:
            why = f" (tools/rabbitmq/rabbitmq.sh start failed: {run.stderr.strip()[-500:]})"
    if not (url and _amqp_url_up(url)):
        message = (
            "no RabbitMQ here: start one with `tools/rabbitmq/rabbitmq.sh install` and "
            f'`eval "$(tools/rabbitmq/rabbitmq.sh start)"`{why}'
        )
        if os.environ.get("SCOPEFX_REQUIRE_RABBITMQ") == "1":
            pytest.fail(message + "; SCOPEFX_REQUIRE_RABBITMQ=1 requires it")
        pytest.skip(message)
    try:
        yield url
    finally:
        if started:
            _rabbitmq_sh("stop")
