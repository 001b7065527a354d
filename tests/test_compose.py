"""docker-compose.yml, Dockerfile and .env.example: validated by Compose itself, and by structure.

``docker compose config`` (the plugin) or, without it, ``docker-compose config`` (Debian's
``docker-compose`` 1.29 package, which ``.ci/run`` installs) validates the file against the
Compose schema and renders it; neither needs a Docker engine. The structural checks below say
what the services must be.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from adapters.telegram.settings import TelegramSettings
from adapters.web.settings import WebSettings
from bot.observe import metrics
from bot.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # resolves <<: merges
    assert isinstance(data, dict)
    return data


def compose_command() -> list[str]:
    """``docker compose`` when the plugin works, else ``docker-compose``; fail when neither."""
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, timeout=60
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy is not None:
        return [legacy]
    pytest.fail(
        "Neither `docker compose` (the Compose plugin) nor `docker-compose` is installed, so "
        "docker-compose.yml cannot be validated: apt-get install docker-compose"
    )


def test_compose_validates_the_file_with_the_example_env(tmp_path: Path) -> None:
    shutil.copy(ROOT / "docker-compose.yml", tmp_path / "docker-compose.yml")
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")  # env_file: .env must exist
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")
    command = compose_command()
    # Values come from .env alone, as on a fresh deployment (the shell would win over it).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FMBOT_", "COMPOSE_"))}
    rendered = ""
    # The opt-in profile too: Compose v2 leaves an inactive profile's services out of config.
    for args in (
        ["--profile", "monitoring", "config", "--quiet"],
        ["--profile", "monitoring", "config"],
    ):
        done = subprocess.run(
            [*command, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"{' '.join(command + args)} failed:\n{done.stderr}"
        rendered = done.stdout
    services = yaml.safe_load(rendered)["services"]
    assert set(services) == {"redis", "ingress", "worker", "prometheus"}
    assert services["worker"]["environment"]["FMBOT_STORE"] == "redis://redis:6379/0"
    assert services["worker"]["environment"]["FMBOT_METRICS_LISTEN"] == "0.0.0.0:9100"


def test_redis_persists_with_aof_on_a_volume(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert redis["image"].startswith("redis:7")
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    # A confirmed update must be on disk: Telegram does not send it again.
    assert "--appendfsync always" in command
    volume, target = redis["volumes"][0].split(":")
    assert target == "/data" and volume in compose["volumes"]
    assert "redis-cli" in redis["healthcheck"]["test"]


@pytest.mark.parametrize("role,replicas", [("ingress", None), ("worker", 2)])
def test_roles_run_the_telegram_command_from_the_built_image_with_the_env_file(
    compose: dict[str, Any], role: str, replicas: int | None
) -> None:
    service = compose["services"][role]
    assert service["command"] == ["telegram", "--role", role]  # ENTRYPOINT is fmbot
    assert service["build"] == "."
    assert ".env" in service["env_file"]
    assert service["environment"]["FMBOT_STORE"].endswith("redis://redis:6379/0}")
    assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    assert service.get("deploy", {}).get("replicas") == replicas


def test_dockerfile_builds_the_project_with_a_compiler_for_llama_cpp() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    assert "build-essential" in text and "cmake" in text
    # The versions CI tested: the lock constrains the install.
    assert re.search(r"^RUN pip install -c requirements/dev\.lock \.$", text, re.M)
    assert re.search(r'^ENTRYPOINT \["fmbot"\]$', text, re.M)
    for path in ("pyproject.toml", "requirements", "bot", "adapters", "prompts"):
        assert path in text


def env_example() -> str:
    return (ROOT / ".env.example").read_text()


def test_env_example_lists_every_setting() -> None:
    names = [f.alias for f in Settings.model_fields.values()]
    names += [f.alias for f in TelegramSettings.model_fields.values()]
    names += [f.alias for f in WebSettings.model_fields.values()]
    listed = set(re.findall(r"^(?:# )?([A-Z][A-Z0-9_]+)=", env_example(), re.M))
    missing = [n for n in names if n and n not in listed]
    assert not missing, f"add these to .env.example: {missing}"
    assert re.search(r"^FMBOT_STORE=redis://redis:6379/0$", env_example(), re.M)


def test_env_example_loads_as_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for model in (Settings, TelegramSettings, WebSettings):
        for name, field in model.model_fields.items():
            monkeypatch.delenv(field.alias or name, raising=False)
    path = ROOT / ".env.example"
    settings = Settings(_env_file=path)
    settings.validate_all()
    assert settings.store_url == "redis://redis:6379/0"
    TelegramSettings(_env_file=path)
    assert WebSettings(_env_file=path).origin is None


def test_prometheus_is_opt_in_and_scrapes_the_port_the_roles_serve(compose: dict[str, Any]) -> None:
    prometheus = compose["services"]["prometheus"]
    assert prometheus["profiles"] == ["monitoring"]
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    listen = compose["x-fmbot"]["environment"]["FMBOT_METRICS_LISTEN"]
    port = int(listen.rstrip("}").rsplit(":", 1)[1])
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for role in ("ingress", "worker"):
        [sd] = jobs[f"fmbot-{role}"]["dns_sd_configs"]
        assert sd["names"] == [role] and sd["port"] == port  # every replica of the service


def test_the_grafana_dashboard_graphs_only_families_fmbot_exports() -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    exported = {family.name for family in metrics.FAMILIES}
    used: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            names = re.findall(r"\b(fmbot_[a-z_]+)", target["expr"])
            assert names, target
            used.update(re.sub(r"_(total|bucket|count|sum)$", "", n) for n in names)
    assert used <= exported, used - exported
    # The families an operator asks about first are on it.
    assert {"fmbot_turns", "fmbot_queue_pending", "fmbot_model_errors"} <= used


def test_the_grafana_dashboards_filters_select_labels_the_families_have() -> None:
    """``$channel`` and ``$model`` narrow the panels: each selector names a label its family
    has, each variable is defined from a family that has that label, and every one is used."""
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    labels = {family.name: set(family.labelnames) for family in metrics.FAMILIES}
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    for variable in variables.values():
        found = re.fullmatch(r"label_values\((fmbot_[a-z_]+), ([a-z_]+)\)", variable["definition"])
        assert found is not None, variable
        family = re.sub(r"_(total|bucket|count|sum)$", "", found.group(1))
        assert found.group(2) in labels[family], variable
        assert variable["includeAll"] and variable["allValue"] == ".*"  # All: no filter
    used: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for metric, selector in re.findall(r"\b(fmbot_[a-z_]+)\{([^}]*)\}", target["expr"]):
                family = re.sub(r"_(total|bucket|count|sum)$", "", metric)
                for label, variable in re.findall(r'(\w+)=~"\$(\w+)"', selector):
                    assert label in labels[family], (metric, label)
                    assert variable in variables, variable
                    used.add(variable)
    assert used == set(variables) == {"channel", "model"}
