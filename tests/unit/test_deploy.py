"""The shipped deployment examples (compose.yaml, deploy/) say what the docs say they do.

No Docker engine or systemd runs here, so these read the files: every long-running service
is supervised and health-checked, the sink keeps its data, host ports can be moved, and the
environment the publisher's containers get passes the start-up validation.
"""

from __future__ import annotations

import configparser
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks.settings import check_environment

ROOT = Path(__file__).resolve().parents[2]
LONG_RUNNING = {"postgres", "redis", "rabbitmq", "worker", "beat", "metrics"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "compose.yaml").read_text()))


def test_compose_runs_every_part_of_a_deployment_supervised_and_health_checked(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert LONG_RUNNING | {"migrate"} == set(services)
    for name in LONG_RUNNING:
        assert services[name]["restart"] == "unless-stopped", name
        assert services[name]["healthcheck"]["test"], name
    assert services["migrate"]["command"] == ["outbox", "db", "upgrade"]
    assert services["migrate"]["restart"] == "no"


def test_compose_publisher_waits_for_migrations_and_healthy_servers(
    compose: dict[str, Any],
) -> None:
    for name in ("worker", "beat", "metrics"):
        depends = compose["services"][name]["depends_on"]
        assert depends["migrate"] == {"condition": "service_completed_successfully"}, name
        assert depends["redis"] == {"condition": "service_healthy"}, name
        assert depends["rabbitmq"] == {"condition": "service_healthy"}, name


def test_compose_sink_keeps_what_it_was_given_on_a_volume(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert re.search(r"--appendfsync (always|everysec)", command)
    assert any(volume.endswith(":/data") for volume in redis["volumes"])


def test_compose_host_ports_come_from_the_environment(compose: dict[str, Any]) -> None:
    services = compose["services"]
    published = {name: services[name]["ports"] for name in services if "ports" in services[name]}
    assert published == {
        "postgres": ["${OUTBOX_POSTGRES_PORT:-5432}:5432"],
        "redis": ["${OUTBOX_REDIS_PORT:-6379}:6379"],
        "rabbitmq": ["${OUTBOX_RABBITMQ_PORT:-5672}:5672"],
        "metrics": ["${OUTBOX_METRICS_PORT:-9808}:9808"],
    }


def test_compose_publisher_environment_passes_start_up_validation(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    environment = dict(compose["x-publisher"]["environment"])
    assert environment["CELERY_BROKER_URL"].startswith("amqp://")
    # The multiprocess directory is the image's; here a writable one stands in for it.
    environment["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path)
    check_environment(environment)


@pytest.mark.parametrize("unit", ["outbox-worker.service", "outbox-beat.service"])
def test_systemd_units_restart_whatever_stopped_them(unit: str) -> None:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read(ROOT / "deploy" / "systemd" / unit)
    assert parser["Service"]["Restart"] == "always"
    assert parser["Unit"]["StartLimitIntervalSec"] == "0"
    assert parser["Service"]["User"] != "root"
    assert parser["Service"]["KillMode"] == "mixed"
