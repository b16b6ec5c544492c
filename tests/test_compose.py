"""docker-compose.yml: it parses, its commands are valid mt-tune invocations, no secret in it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import typer.main
import yaml
from typer.testing import CliRunner

from mt_tune.cli import app

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, from `env`."""

    def one(match: re.Match) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if name in env and env[name] != "":
            return env[name]
        if op == ":-":
            return arg
        raise AssertionError(f"${{{name}}} is unset and has no default")

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, value)


def example_env() -> dict[str, str]:
    pairs = [line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if line and not line.startswith("#")]
    return {k: v for k, v in pairs}


def command_path(args: list[str]) -> tuple[list[str], object]:
    """The subcommand names at the start of `args` (e.g. ["study", "create"]) and that command."""
    command = typer.main.get_command(app)
    path = []
    for token in args:
        if token not in getattr(command, "commands", {}):  # only groups have subcommands
            break
        command = command.commands[token]
        path.append(token)
    return path, command


def test_services_and_volumes(compose):
    assert set(compose["services"]) == {"postgres", "dashboard", "worker"}
    assert {"pgdata", "artifacts", "data-cache"} <= set(compose["volumes"])


def test_postgres_keeps_its_data_reports_health_and_listens_locally(compose):
    postgres = compose["services"]["postgres"]
    assert "pgdata:/var/lib/postgresql/data" in postgres["volumes"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert postgres["ports"] == ["127.0.0.1:5432:5432"]


def test_no_password_is_written_in_the_compose_file():
    text = COMPOSE.read_text()
    for line in text.splitlines():
        if "PASSWORD" in line and ":" in line and not line.lstrip().startswith("#"):
            assert "${POSTGRES_PASSWORD:?" in line, line  # only ever taken from the environment
    assert not re.search(r"postgresql(\+psycopg)?://[^@/\s]*:[^@/\s]*@", text)  # no user:password@ in URLs


def test_the_env_file_is_not_committed_but_its_example_is():
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT)
    assert ignored.returncode == 0
    assert "POSTGRES_PASSWORD" in example_env()


def test_dashboard_is_published_on_localhost_only(compose):
    dashboard = compose["services"]["dashboard"]
    assert dashboard["ports"] == ["127.0.0.1:8080:8080"]
    assert dashboard["command"][dashboard["command"].index("--host") + 1] == "0.0.0.0"
    assert dashboard["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_worker_reserves_the_gpus_and_runs_one_process_per_device(compose):
    worker = compose["services"]["worker"]
    device = worker["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["capabilities"] == ["gpu"] and device["count"] == "all"
    assert worker["command"][:2] == ["mt-tune", "worker"] and "--devices" in worker["command"]
    assert worker["environment"]["MT_TUNE_STORAGE"].startswith("postgresql+psycopg://")
    assert "replicas" not in worker.get("deploy", {})  # left to --scale worker=N
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM pytorch/pytorch:\S+-cuda\S+-runtime$", dockerfile, re.M)


def documented_commands(compose) -> list[list[str]]:
    """Every service command, and the one-shot commands the file's comments document."""
    commands = [service["command"] for service in compose["services"].values() if "command" in service]
    for line in COMPOSE.read_text().splitlines():
        found = re.search(r"docker compose run --rm worker (mt-tune .*?)\s*(#|$)", line)
        if found:
            commands.append(found.group(1).split())
    return commands


def test_every_command_is_a_valid_mt_tune_invocation(compose):
    env = example_env()
    commands = documented_commands(compose)
    assert ["mt-tune", "study", "create", "studies/demo.yaml"] in commands  # the study's one-shot
    runner = CliRunner()
    for command in commands:
        args = [interpolate(a, env) for a in command]
        assert args[0] == "mt-tune", command
        path, click_command = command_path(args[1:])
        assert path, f"{command}: no mt-tune subcommand"
        shown = runner.invoke(app, [*path, "--help"])
        assert shown.exit_code == 0, (command, shown.output)
        # Every option and argument parses as the command would parse it (nothing runs).
        click_command.make_context(" ".join(["mt-tune", *path]), args[1 + len(path):])
        for arg in args:
            if arg.startswith("studies/"):
                assert (ROOT / arg).is_file(), arg


def test_docker_compose_config_accepts_the_file(tmp_path):
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("no docker client with the compose plugin here")
    done = subprocess.run([docker, "compose", "-f", str(COMPOSE), "--env-file", str(ENV_EXAMPLE), "config", "--quiet"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
