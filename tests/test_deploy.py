"""The deployment files: schema validation (offline) and the properties a reviewer checks by hand.

- Kubernetes manifests under deploy/k8s are validated with `kubernetes-validate`, which ships the
  Kubernetes JSON schemas inside the package, in strict mode (unknown fields are errors).
- docker-compose.yml is validated with `check-jsonschema` against the compose-spec schema it
  vendors (`--builtin-schema vendor.compose-spec`).
- deploy/Dockerfile is read with `dockerfile`, Docker's own (BuildKit) parser.

None of them needs the network, a Docker engine or a cluster. Each validator is also shown to
reject a broken copy, so a silently passing tool cannot hide a broken manifest.
"""

from __future__ import annotations

import copy
import fnmatch
import http.server
import os
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dockerfile
import kubernetes_validate
import pytest
import yaml
from pydantic import AliasChoices
from starlette.routing import Match

from callbot.settings import Settings
from callbot.web.app import create_app

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = DEPLOY / "env.example"

SERVE_COMMAND = ["callbot", "serve", "--host", "0.0.0.0", "--port", "8080"]
MIGRATE_COMMAND = ["callbot", "db", "upgrade"]
# The oldest Kubernetes the manifests are meant for, and the newest the validator knows.
K8S_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
NOT_APPLIED = {"kustomization.yaml", "secret.example.yaml"}  # not objects `kubectl apply -k` sends


# ---------------------------------------------------------------------------------------- helpers


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    objects = {}
    for path in manifest_files():
        for doc in load_docs(path):
            objects[(doc["kind"], doc["metadata"]["name"])] = doc
    return objects


def one(kind: str) -> dict[str, Any]:
    found = [doc for (k, _), doc in k8s_objects().items() if k == kind]
    assert len(found) == 1, f"expected exactly one {kind} under deploy/k8s, found {len(found)}"
    return found[0]


def server_container() -> dict[str, Any]:
    containers = one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def configmap_data() -> dict[str, str]:
    return dict(one("ConfigMap")["data"])


def secret_data() -> dict[str, str]:
    return dict(one("Secret")["stringData"])


def settings_env_names() -> set[str]:
    """Every environment name Settings reads (case-insensitively, as pydantic-settings does)."""
    names = set()
    prefix = Settings.model_config.get("env_prefix", "")
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(choice).upper() for choice in alias.choices)
        elif isinstance(alias, str):
            names.add(alias.upper())
        else:
            names.add(f"{prefix}{field_name}".upper())
    return names


def env_example() -> dict[str, str | None]:
    """Names in deploy/env.example, with their value (None for a commented-out line)."""
    found: dict[str, str | None] = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(r"(#\s*)?([A-Z][A-Z0-9_]*)=(.*)", line.strip())
        if match:
            found[match.group(2)] = None if match.group(1) else match.group(3)
    return found


def clean_env(monkeypatch: pytest.MonkeyPatch, values: dict[str, str]) -> Settings:
    """Settings as the server would read them from exactly `values` (no .env, no stray env)."""
    for name in list(os.environ):
        if name.upper() in settings_env_names():
            monkeypatch.delenv(name)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)  # type: ignore[call-arg]


def container_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    for item in container.get("ports", []):
        if item.get("name") == port:
            return int(item["containerPort"])
    raise AssertionError(f"container {container['name']} has no port named {port!r}")


def served(path: str, kind: str = "http", method: str = "GET") -> bool:
    """Whether the callbot app has a route for this path (without starting it)."""
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        public_url="https://callbot.example.com",
        openai_api_key="placeholder",
        twilio_auth_token="placeholder",
        admin_password="placeholder",
    )
    app = create_app(settings)
    scope = {
        "type": kind,
        "path": path,
        "root_path": "",
        "method": method,
        "headers": [],
        "query_string": b"",
    }
    return any(route.matches(scope)[0] is Match.FULL for route in app.router.routes)


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return data


INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with nothing set: what a .env copied from env.example gives."""
    return INTERPOLATION.sub(lambda m: m.group(2) or "", value)


def compose_environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {name: interpolate(str(value)) for name, value in env.items()}


def duration_s(text: str) -> float:
    """A compose duration ('330s', '5m30s', '1h') in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 0.000001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a compose duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def dockerfile_stages() -> list[list[dockerfile.Command]]:
    stages: list[list[dockerfile.Command]] = []
    for command in dockerfile.parse_file(str(DOCKERFILE)):
        if command.cmd == "FROM":
            stages.append([])
        elif stages:
            stages[-1].append(command)
    return stages


def final_stage(cmd: str) -> list[dockerfile.Command]:
    return [c for c in dockerfile_stages()[-1] if c.cmd == cmd]


def image_command(args: list[str]) -> list[str]:
    """What the image runs for a container/service command (the image's ENTRYPOINT + it)."""
    (entrypoint,) = final_stage("ENTRYPOINT")
    assert entrypoint.json, "ENTRYPOINT must be in exec (JSON) form so the server gets SIGTERM"
    return list(entrypoint.value) + list(args)


# --------------------------------------------------------------------------- schema validation


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_manifest_matches_the_kubernetes_schema(path: Path, version: str) -> None:
    docs = load_docs(path)
    assert docs, f"{path} holds no object"
    for doc in docs:
        # strict: unknown fields (typos such as terminationGracePeriodSecond) are errors.
        # A kind without a schema raises SchemaNotFoundError, which fails the test too.
        kubernetes_validate.validate(doc, version, strict=True)


def test_k8s_validator_rejects_a_broken_manifest() -> None:
    deployment = copy.deepcopy(one("Deployment"))
    deployment["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 360
    with pytest.raises(kubernetes_validate.ValidationError, match="terminationGracePeriodSecond"):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)
    deployment = copy.deepcopy(one("Deployment"))
    deployment["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


def check_compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_compose_file_matches_the_compose_spec_schema() -> None:
    result = check_compose_schema(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_validator_rejects_a_broken_compose_file(tmp_path: Path) -> None:
    broken = compose()
    broken["services"]["callbot"]["depends_on"]["db"]["condition"] = "service_is_healthy"
    broken["services"]["callbot"]["stop_grace_periods"] = "330s"
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken), encoding="utf-8")
    result = check_compose_schema(path)
    assert result.returncode != 0
    assert "service_is_healthy" in result.stdout
    assert "stop_grace_periods" in result.stdout


# ----------------------------------------------------------------------------------- kustomize


def test_kustomization_applies_every_manifest_but_the_secret_template() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources))
    expected = sorted(p.name for p in K8S.glob("*.yaml") if p.name not in NOT_APPLIED)
    assert sorted(resources) == expected
    # the placeholder Secret must never overwrite the real one
    assert "secret.example.yaml" not in resources
    # everything lands in the namespace the manifests create
    assert kustomization["namespace"] == one("Namespace")["metadata"]["name"]
    # `images:` retargets the image every workload uses
    names = {entry["name"] for entry in kustomization["images"]}
    workloads = [one("Deployment"), one("Job")]
    for workload in workloads:
        for container in workload["spec"]["template"]["spec"]["containers"]:
            assert container["image"] in names


# ---------------------------------------------------------------------------------- deployment


def test_deployment_runs_several_replicas_of_the_server() -> None:
    deployment = one("Deployment")
    assert deployment["spec"]["replicas"] >= 3
    strategy = deployment["spec"]["strategy"]
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0, "a rollout must not drop capacity"
    assert image_command(server_container()["args"]) == SERVE_COMMAND
    assert container_port(server_container(), "http") == 8080


def test_deployment_selector_service_and_budget_agree() -> None:
    pod_labels = one("Deployment")["spec"]["template"]["metadata"]["labels"]
    selector = one("Deployment")["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    service = one("Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    for port in service["spec"]["ports"]:
        assert container_port(server_container(), port["targetPort"]) == 8080
    budget = one("PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_readiness_is_healthz_and_liveness_survives_a_drain() -> None:
    container = server_container()
    readiness = container["readinessProbe"]["httpGet"]
    assert readiness["path"] == "/healthz"
    assert container_port(container, readiness["port"]) == 8080
    assert served("/healthz")
    liveness = container["livenessProbe"]
    # /healthz answers 503 while draining: as a liveness probe it would kill calls in progress.
    assert liveness.get("httpGet", {}).get("path") != "/healthz"
    assert "tcpSocket" in liveness or liveness["failureThreshold"] * liveness["periodSeconds"] >= 60
    # start-up (migrations, waiting for another pod's migration lock) is not a liveness failure
    startup = container["startupProbe"]
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 120


def test_termination_grace_outlasts_prestop_and_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    pod = one("Deployment")["spec"]["template"]["spec"]
    pre_stop = server_container()["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        sleep_s = float(pre_stop["sleep"]["seconds"])
    else:
        command = pre_stop["exec"]["command"]
        assert command[0] == "sleep", command
        sleep_s = float(command[1])
    assert sleep_s >= 5, "the endpoint must be gone from every proxy before SIGTERM"
    settings = clean_env(monkeypatch, {**configmap_data(), **secret_data()})
    assert pod["terminationGracePeriodSeconds"] > sleep_s + settings.drain_timeout_s


def test_pod_runs_unprivileged_with_a_read_only_root() -> None:
    for workload in (one("Deployment"), one("Job")):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod.get("automountServiceAccountToken") is False
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= container["resources"][kind].keys(), (container["name"], kind)


def test_image_user_matches_the_pod_user() -> None:
    (user,) = final_stage("USER")
    uid = user.value[0].split(":")[0]
    assert uid.isdigit(), "USER must be numeric for Kubernetes to verify runAsNonRoot"
    for workload in (one("Deployment"), one("Job")):
        assert workload["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(uid)


def test_spool_dir_is_a_writable_volume(monkeypatch: pytest.MonkeyPatch) -> None:
    pod = one("Deployment")["spec"]["template"]["spec"]
    settings = clean_env(monkeypatch, {**configmap_data(), **secret_data()})
    spool = settings.spool_dir
    assert spool.is_absolute(), "with a read-only root filesystem the spool must be a mounted volume"
    mounts = {m["mountPath"]: m["name"] for m in server_container()["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert str(spool) in mounts
    assert "emptyDir" in volumes[mounts[str(spool)]]
    assert "/tmp" in mounts


def test_env_comes_from_the_configmap_and_the_secret() -> None:
    for workload in (one("Deployment"), one("Job")):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            sources = container["envFrom"]
            assert {"configMapRef": {"name": one("ConfigMap")["metadata"]["name"]}} in sources
            assert {"secretRef": {"name": one("Secret")["metadata"]["name"]}} in sources


def test_every_env_name_the_deployment_sets_is_a_documented_setting() -> None:
    known = settings_env_names()
    documented = env_example().keys()
    names = set(configmap_data()) | set(secret_data())
    for workload in (one("Deployment"), one("Job")):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            names |= {item["name"] for item in container.get("env", [])}
    assert names
    assert names <= known, f"not read by Settings: {sorted(names - known)}"
    assert names <= documented, f"not in deploy/env.example: {sorted(names - documented)}"
    # credentials belong in the Secret, not in the ConfigMap
    secrets = {"OPENAI_API_KEY", "TWILIO_AUTH_TOKEN", "CALLBOT_ADMIN_PASSWORD", "CALLBOT_DATABASE_URL"}
    assert secrets <= set(secret_data())
    assert not secrets & set(configmap_data())


def test_deployment_settings_are_complete_for_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = clean_env(monkeypatch, {**configmap_data(), **secret_data()})
    settings.check_serving()
    assert settings.database_url.startswith("postgresql+asyncpg://"), "replicas must share PostgreSQL"
    assert settings.twilio_auth_token is not None, "replicas must share the stream-token key"


def test_secret_template_holds_only_placeholders() -> None:
    for name, value in secret_data().items():
        assert "REPLACE-ME" in value, f"{name} in secret.example.yaml looks like a real value"


def test_migrate_job_runs_db_upgrade_with_the_server_image() -> None:
    job = one("Job")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    command = container.get("command") or image_command(container["args"])
    assert list(command) == MIGRATE_COMMAND
    assert container["image"] == server_container()["image"]
    assert pod["restartPolicy"] in {"Never", "OnFailure"}


def test_ingress_passes_long_websockets_over_tls() -> None:
    ingress = one("Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert ingress["spec"]["ingressClassName"] == "nginx"
    for name in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[f"nginx.ingress.kubernetes.io/{name}"]) >= 3600
    tls_hosts = {host for entry in ingress["spec"]["tls"] for host in entry["hosts"]}
    assert all(entry.get("secretName") for entry in ingress["spec"]["tls"])
    public_host = urlsplit(configmap_data()["CALLBOT_PUBLIC_URL"]).hostname
    assert urlsplit(configmap_data()["CALLBOT_PUBLIC_URL"]).scheme == "https"
    rule_hosts = {rule["host"] for rule in ingress["spec"]["rules"]}
    assert rule_hosts == {public_host}, "Twilio's signatures are checked against CALLBOT_PUBLIC_URL"
    assert rule_hosts <= tls_hosts


def ingress_paths() -> list[dict[str, Any]]:
    return [path for rule in one("Ingress")["spec"]["rules"] for path in rule["http"]["paths"]]


def publicly_routed(path: str) -> bool:
    for entry in ingress_paths():
        prefix = entry["path"].rstrip("/")
        if entry["pathType"] == "Exact" and path == entry["path"]:
            return True
        if entry["pathType"] == "Prefix" and (path == prefix or path.startswith(prefix + "/")):
            return True
    return False


def test_ingress_routes_the_app_and_hides_health_and_metrics() -> None:
    service = one("Service")
    port_names = {port["name"] for port in service["spec"]["ports"]}
    for entry in ingress_paths():
        assert entry["pathType"] in {"Prefix", "Exact"}
        backend = entry["backend"]["service"]
        assert backend["name"] == service["metadata"]["name"]
        assert backend["port"]["name"] in port_names
    assert served("/twilio/voice", method="POST") and publicly_routed("/twilio/voice")
    assert served("/twilio/media", kind="websocket") and publicly_routed("/twilio/media")
    for path in ("/tickets", "/tickets/1", "/api/tickets", "/api/tickets/1", "/review-static/review.css"):
        assert served(path) and publicly_routed(path), path
    assert not publicly_routed("/healthz")
    assert not publicly_routed("/metrics")


# --------------------------------------------------------------------------------------- compose


def test_compose_services_and_start_order() -> None:
    services = compose()["services"]
    assert {"callbot", "db"} <= services.keys()
    callbot, db = services["callbot"], services["db"]
    assert callbot["build"]["context"] == "."
    assert callbot["build"]["dockerfile"] == "deploy/Dockerfile"
    assert image_command(callbot.get("command", final_stage("CMD")[0].value)) == SERVE_COMMAND
    assert "8080:8080" in [str(port) for port in callbot["ports"]]
    env_files = callbot["env_file"] if isinstance(callbot["env_file"], list) else [callbot["env_file"]]
    assert ".env" in [entry if isinstance(entry, str) else entry["path"] for entry in env_files]
    assert callbot["depends_on"]["db"]["condition"] == "service_healthy"
    env = compose_environment(callbot)
    if "migrate" in services:
        # migrations run once, in the one-shot service; the server does not repeat them
        migrate = services["migrate"]
        assert image_command(migrate["command"]) == MIGRATE_COMMAND
        assert migrate.get("image") == callbot.get("image")
        assert migrate["depends_on"]["db"]["condition"] == "service_healthy"
        assert callbot["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert env["CALLBOT_MIGRATE_ON_START"] == "false"
        assert compose_environment(migrate)["CALLBOT_DATABASE_URL"] == env["CALLBOT_DATABASE_URL"]
    else:
        assert env.get("CALLBOT_MIGRATE_ON_START", "true") != "false"
    assert db["image"].startswith("postgres:16")


def test_compose_database_url_points_at_the_db_service() -> None:
    services = compose()["services"]
    url = urlsplit(compose_environment(services["callbot"])["CALLBOT_DATABASE_URL"])
    db_env = compose_environment(services["db"])
    assert url.scheme == "postgresql+asyncpg"
    assert url.hostname == "db"
    assert url.port == 5432
    assert url.username == db_env["POSTGRES_USER"]
    assert url.password == db_env["POSTGRES_PASSWORD"]
    assert url.path == "/" + db_env["POSTGRES_DB"]
    assert "ports" not in services["db"], "the database is reachable from the compose network only"
    volume = services["db"]["volumes"][0].split(":")[0]
    assert volume in compose()["volumes"], "the database lives in a named volume"


def test_compose_interpolations_have_defaults() -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    for match in INTERPOLATION.finditer(text):
        assert match.group(2) is not None, f"{match.group(0)} needs a default for a fresh .env"


def test_compose_healthchecks() -> None:
    services = compose()["services"]
    callbot_test = services["callbot"]["healthcheck"]["test"]
    assert callbot_test[0] == "CMD" and "/healthz" in " ".join(callbot_test)
    db_test = services["db"]["healthcheck"]["test"]
    assert "pg_isready" in " ".join(db_test)


def test_compose_stop_grace_outlasts_the_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    callbot = compose()["services"]["callbot"]
    example = {name: value for name, value in env_example().items() if value is not None}
    settings = clean_env(monkeypatch, {**example, **compose_environment(callbot)})
    assert callbot.get("stop_signal", "SIGTERM") == "SIGTERM"
    assert duration_s(callbot["stop_grace_period"]) > settings.drain_timeout_s


def test_compose_env_with_a_copied_env_example_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose()["services"]
    example = {name: value for name, value in env_example().items() if value is not None}
    credentials = {"OPENAI_API_KEY": "sk-placeholder", "TWILIO_AUTH_TOKEN": "placeholder"}
    credentials["CALLBOT_PUBLIC_URL"] = "https://callbot.example.com"
    for name in ("callbot", "migrate"):
        if name not in services:
            continue
        env = compose_environment(services[name])
        assert set(env) <= settings_env_names(), f"{name}: not read by Settings: {set(env)}"
        assert set(env) <= env_example().keys(), f"{name}: not in deploy/env.example"
        clean_env(monkeypatch, {**example, **credentials, **env}).check_serving()


# ------------------------------------------------------------------------------------ Dockerfile


def test_dockerfile_builds_a_slim_non_root_server_image() -> None:
    stages = dockerfile_stages()
    froms = [c for c in dockerfile.parse_file(str(DOCKERFILE)) if c.cmd == "FROM"]
    build_args = dict(
        c.value[0].split("=", 1)
        for c in dockerfile.parse_file(str(DOCKERFILE))
        if c.cmd == "ARG" and "=" in c.value[0]
    )
    base = froms[-1].value[0].replace("${PYTHON_VERSION}", build_args.get("PYTHON_VERSION", ""))
    assert re.fullmatch(r"python:3\.1[12]-slim", base), base
    (user,) = final_stage("USER")
    assert user.value[0].split(":")[0] not in {"root", "0"}
    assert [c.value for c in final_stage("EXPOSE")] == [("8080",)]
    (stop,) = final_stage("STOPSIGNAL")
    assert stop.value == ("SIGTERM",)
    (cmd,) = final_stage("CMD")
    assert cmd.json and image_command(list(cmd.value)) == SERVE_COMMAND
    # the package is installed from the repository: its metadata and the package itself, and its
    # dependencies from the lock, hash-checked, never re-resolved
    copied = {
        src for stage in stages for c in stage if c.cmd == "COPY" and not c.flags for src in c.value[:-1]
    }
    assert {"pyproject.toml", "README.md", "LICENSE", "callbot", "requirements.lock"} <= copied
    runs = " ".join(" ".join(c.value) for stage in stages for c in stage if c.cmd == "RUN")
    assert "pip install --require-hashes -r requirements.lock" in runs
    assert "pip install --no-deps ." in runs


def test_dockerfile_healthcheck_uses_python_against_healthz() -> None:
    (check,) = final_stage("HEALTHCHECK")
    assert check.value[0] == "CMD"
    command = list(check.value[1:]) if check.json else shlex.split(check.value[1])
    assert command[:2] == ["python", "-c"] and "/healthz" in command[2] and "urllib" in command[2]


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[int, type[_Health]]]:
    handler = type("Health", (_Health,), {"status": 200})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("where", ["Dockerfile", "compose"])
def test_healthcheck_command_passes_on_200_and_fails_on_503(
    where: str, health_server: tuple[int, type[_Health]]
) -> None:
    if where == "Dockerfile":
        (check,) = final_stage("HEALTHCHECK")
        command = list(check.value[1:])
    else:
        command = list(compose()["services"]["callbot"]["healthcheck"]["test"][1:])
    port, handler = health_server
    assert "127.0.0.1:8080" in command[2]
    code = command[2].replace("127.0.0.1:8080", f"127.0.0.1:{port}")
    run = [sys.executable, *command[1:2], code]
    assert subprocess.run(run, capture_output=True, timeout=30, check=False).returncode == 0
    handler.status = 503  # draining
    assert subprocess.run(run, capture_output=True, timeout=30, check=False).returncode == 1


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str) -> bool:
    """Docker's rule, simplified: the last matching pattern wins; a pattern also covers subpaths."""
    result = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in dockerignore_patterns():
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if any(
            fnmatch.fnmatchcase(p, pattern) or fnmatch.fnmatchcase(p, pattern.replace("**/", ""))
            for p in prefixes
        ):
            result = not negated
    return result


def test_dockerignore_keeps_secrets_and_clutter_out_of_the_build() -> None:
    excluded = [
        ".env",
        ".git/config",
        ".venv/bin/python",
        ".venv-ci/bin/python",
        "callbot.db",
        "var/spool/x",
        ".pytest_cache/v",
        ".mypy_cache/x",
        ".ruff_cache/x",
        ".hypothesis/x",
        "callbot/__pycache__/cli.cpython-311.pyc",
    ]
    for path in excluded:
        assert ignored(path), path
    for path in (
        "pyproject.toml",
        "README.md",
        "callbot/cli.py",
        "callbot/migrations/versions/0001_tickets.py",
    ):
        assert not ignored(path), path
