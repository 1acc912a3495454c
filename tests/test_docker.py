"""The container files, checked without Docker (no daemon on the test machines): hadolint on every Dockerfile,
every file they copy exists and is not excluded from the build context, the compose file's services, volumes,
ports and commands fit the images, the station file and the CLI."""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml

from inspection.cli import build_parser
from inspection.deploy.line.station import load_station

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = [ROOT / "Dockerfile", *sorted((ROOT / "docker").glob("*.Dockerfile"))]
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
EXTRAS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(x for x in path.read_text().splitlines() if not x.lstrip().startswith("#")))
    return [(m.group(1).upper(), m.group(2)) for m in re.finditer(r"^(\w+)\s+(.*)$", text, re.M)]


def test_there_are_runner_gpu_and_training_images():
    assert {p.relative_to(ROOT).as_posix() for p in DOCKERFILES} == {"Dockerfile", "docker/gpu.Dockerfile",
                                                                    "docker/train.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile):
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    r = subprocess.run([hadolint, "--failure-threshold", "info", str(dockerfile)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_are_multi_stage_non_root_and_copy_only_what_the_context_has(dockerfile):
    steps = _instructions(dockerfile)
    names = [k for k, _ in steps]
    assert names.count("FROM") >= 2, "multi-stage: build tools stay in the build stage"
    user = [v for k, v in steps if k == "USER"]
    assert user and user[-1].split(":")[0] not in ("root", "0"), "the final stage runs as a non-root user"
    assert names.index("USER") > max(i for i, k in enumerate(names) if k == "FROM")
    ignored = [x.strip() for x in (ROOT / ".dockerignore").read_text().splitlines() if x.strip() and x[0] != "#"]
    for args in (v for k, v in steps if k == "COPY" and "--from=" not in v):
        for src in shlex.split(args)[:-1]:
            assert (ROOT / src).exists(), f"{dockerfile.name}: COPY {src}: no such file in the build context"
            assert src.split("/")[0] not in ignored, f"{dockerfile.name}: COPY {src} is excluded by .dockerignore"
    for extras in re.findall(r'ARG EXTRAS="([^"]+)"', dockerfile.read_text()):
        assert set(extras.split()) <= set(EXTRAS), f"{dockerfile.name}: unknown extra in {extras}"
    for extra in re.findall(r"--build-arg ADD_EXTRAS=(\S+)", dockerfile.read_text()):  # the documented options
        assert extra in EXTRAS, f"{dockerfile.name}: ADD_EXTRAS={extra} names no extra of pyproject.toml"
    assert ("ENTRYPOINT", '["inspection"]') in steps


def test_runner_images_carry_no_torch_and_check_the_runner_health_endpoint():
    for name in ("Dockerfile", "docker/gpu.Dockerfile"):
        text = (ROOT / name).read_text()
        extras = re.search(r'ARG EXTRAS="([^"]+)"', text).group(1).split()
        assert "train" not in extras
        if name == "Dockerfile":  # OpenVINO for Intel line PCs: an extra on top of the default set
            assert "--build-arg ADD_EXTRAS=openvino" in text and "$EXTRAS $ADD_EXTRAS" in text
        assert "torch" not in text.lower().replace("no torch", "").replace("without torch", "")
        health = [v for k, v in _instructions(ROOT / name) if k == "HEALTHCHECK"]
        assert health and "127.0.0.1:9100/health" in health[0]
        cmd = re.search(r'^CMD (\[.*\])$', text, re.M).group(1)
        args = build_parser().parse_args(yaml.safe_load(cmd))
        assert args.command == "run" and {"http.host=0.0.0.0", "http.port=9100"} <= set(args.set)


def _volumes(service: dict) -> list[tuple[str, str]]:
    return [tuple(v.split(":")[:2]) for v in service.get("volumes", [])]


def test_compose_services_fit_the_images_and_each_other():
    services, declared = COMPOSE["services"], set(COMPOSE["volumes"])
    assert {"runner", "review", "mosquitto", "postgres"} <= set(services)
    for name, svc in services.items():
        if "build" in svc:
            assert (ROOT / svc["build"]["dockerfile"]).is_file(), name
            assert set(svc["build"].get("args", {}).get("EXTRAS", "line").split()) <= set(EXTRAS), name
        for src, _ in _volumes(svc):
            assert src in declared or (ROOT / src).exists(), f"{name}: volume {src} is neither declared nor a file"
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
    assert services["postgres"]["healthcheck"] and services["review"]["healthcheck"]
    assert services["runner"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_the_compose_station_talks_to_the_compose_services():
    services = COMPOSE["services"]
    mounts = dict(_volumes(services["runner"]))
    station_file = next(src for src, dst in mounts.items() if dst == "/etc/inspection/station.yaml")
    cfg = load_station(ROOT / station_file)
    assert cfg.mqtt.host in services and re.match(r"postgresql://[^@]+@postgres:5432/", cfg.log.db)
    assert "PGPASSWORD" in services["runner"]["environment"]
    assert (cfg.http.host, cfg.http.port) == ("0.0.0.0", 9100) and "127.0.0.1:9100:9100" in services["runner"]["ports"]
    assert cfg.mqtt.username and "MQTT_PASSWORD" in services["runner"]["environment"]
    broker_conf = next(src for src, dst in _volumes(services["mosquitto"]) if dst == "/mosquitto-auth.conf")
    conf = (ROOT / broker_conf).read_text()
    assert "allow_anonymous false" in conf and "password_file" in conf and "no-auth" not in str(services["mosquitto"])
    for name, svc in services.items():  # published on the host's loopback only (TLS proxy for anything wider)
        assert all(str(p).startswith("127.0.0.1:") for p in svc.get("ports", [])), name
    served = {dst for _, dst in _volumes(services["runner"])}
    for path in (cfg.log.folder, cfg.log.outbox, cfg.source.path, str(Path(cfg.package).parent)):
        assert any(path == d or path.startswith(d + "/") for d in served), f"{path} is on no volume of the runner"
    assert mounts["models"] == "/models" and "/models:ro" in " ".join(services["runner"]["volumes"])


def test_compose_commands_are_valid_cli_invocations():
    services = COMPOSE["services"]
    for name in ("trainer", "review"):
        script = services[name]["command"][0]
        for part in re.split(r"&&|;", script):
            words = shlex.split(part)
            if not words or words[0] != "inspection" and words[:1] != ["exec"]:
                continue
            words = words[1:] if words[0] == "inspection" else words[2:]
            args = build_parser().parse_args(words)  # SystemExit on an unknown option
            if args.command == "review":
                assert args.host == "0.0.0.0" and args.db.startswith("postgresql://")
                assert f"127.0.0.1:{args.port}:{args.port}" in services["review"]["ports"]
            if args.command == "models":
                assert args.promote and args.registry == "/models"
