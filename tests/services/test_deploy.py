"""The deployment files, checked without a container engine (none runs here): they parse, the
commands they run exist, the variables they set are settings, the ports agree, the example env
file defines what compose requires."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

from services.cli import build_parser
from services.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
KUBERAY = ROOT / "deploy" / "kuberay"


def load_yaml(path: Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


@cache
def compose() -> dict:
    return load_yaml(COMPOSE)[0]


@cache
def manifests() -> list[dict]:
    return [doc for path in sorted(KUBERAY.glob("*.yaml")) for doc in load_yaml(path)]


@cache
def ray_start_flags() -> set[str]:
    ray = Path(sys.executable).with_name("ray")
    text = subprocess.run(
        [str(ray), "start", "--help"], capture_output=True, text=True, check=True
    ).stdout
    return set(re.findall(r"--[a-z][a-z-]+", text))


def command_of(service: dict) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else command


def test_every_file_parses():
    for path in [
        COMPOSE,
        ROOT / "docker-compose.gpu.yml",
        *ROOT.glob("deploy/**/*.yml"),
        *KUBERAY.glob("*.yaml"),
    ]:
        assert load_yaml(path), path
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/simclr-service.json").read_text())
    assert dashboard["panels"] and all(p["targets"][0]["expr"] for p in dashboard["panels"])
    assert set(compose()["services"]) >= {
        "postgres",
        "ray-head",
        "ray-worker",
        "api",
        "prometheus",
        "grafana",
    }
    kinds = {doc["kind"] for doc in manifests()}
    assert {
        "RayCluster",
        "Deployment",
        "StatefulSet",
        "Service",
        "Secret",
        "PersistentVolumeClaim",
    } <= kinds


def test_the_commands_exist_in_the_package_and_in_ray():
    parser = build_parser()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'simclr = "services.cli:main"' in pyproject
    api_commands = [command_of(compose()["services"]["api"])]
    api_commands += [c["command"] for d in manifests() if d["kind"] == "Deployment"
                     for c in d["spec"]["template"]["spec"]["containers"]]  # fmt: skip
    cmd = re.search(r"^CMD (\[.*\])$", (ROOT / "deploy/Dockerfile").read_text(), re.M).group(1)
    api_commands.append(json.loads(cmd))
    for command in api_commands:
        assert command[0] == "simclr"
        args = parser.parse_args(command[1:])
        assert (args.command, args.host, args.port) == ("serve", "0.0.0.0", 8000)
    flags = ray_start_flags()
    gpu_worker = load_yaml(ROOT / "docker-compose.gpu.yml")[0]["services"]["ray-worker"]
    for command in [*(command_of(compose()["services"][n]) for n in ("ray-head", "ray-worker", "ray-decode")),
                    command_of(gpu_worker)]:  # fmt: skip
        assert command[:2] == ["ray", "start"]
        used = {arg.split("=")[0] for arg in command[2:] if arg.startswith("--")}
        assert used <= flags, used - flags
    decode = command_of(compose()["services"]["ray-decode"])
    assert json.loads(decode[-1].split("=", 1)[1]) == {"decode": 1000}
    for cluster in (d for d in manifests() if d["kind"] == "RayCluster"):
        groups = [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
        for group in groups:
            assert {f"--{key}" for key in group["rayStartParams"]} <= flags


def environments() -> list[dict[str, str]]:
    envs = [s.get("environment", {}) for s in compose()["services"].values()]
    for doc in manifests():
        spec = doc.get("spec", {})
        templates = [spec.get("template")] + [
            g["template"] for g in spec.get("workerGroupSpecs", [])
        ]
        templates.append(spec.get("headGroupSpec", {}).get("template"))
        for template in filter(None, templates):
            for container in template["spec"]["containers"]:
                envs.append(
                    {e["name"]: e.get("value", "<secret>") for e in container.get("env", [])}
                )
    return envs


def test_every_simclr_variable_is_a_setting():
    fields = {f"SIMCLR_{name.upper()}" for name in Settings.model_fields}
    used = {key for env in environments() for key in env if key.startswith("SIMCLR_")}
    assert used and used <= fields, used - fields
    ray_env = compose()["services"]["ray-head"]["environment"]
    assert ray_env["RAY_AUTH_MODE"] == "token"  # security stays on


def port_of(url: str) -> int:
    return int(re.search(r":(\d+)", url.split("//")[-1]).group(1))


def test_ports_agree_across_files():
    services = compose()["services"]
    api_env = services["api"]["environment"]
    head = " ".join(command_of(services["ray-head"]))
    dashboard = int(re.search(r"--dashboard-port=(\d+)", head).group(1))
    gcs = int(re.search(r"--port=(\d+)", head).group(1))
    metrics = int(re.search(r"--metrics-export-port=(\d+)", head).group(1))
    assert services["ray-head"]["ports"] == [f"127.0.0.1:{dashboard}:{dashboard}"]
    assert port_of(api_env["SIMCLR_RAY_ADDRESS"]) == dashboard
    assert f"ray-head:{gcs}" in " ".join(command_of(services["ray-worker"]))
    assert f"--metrics-export-port={metrics}" in " ".join(command_of(services["ray-worker"]))
    api_port = 8000
    assert services["api"]["ports"] == [f"127.0.0.1:{api_port}:{api_port}"]
    assert port_of(api_env["SIMCLR_PUBLIC_URL"]) == api_port
    prometheus = load_yaml(ROOT / "deploy/prometheus/prometheus.yml")[0]
    api_job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "simclr-api")
    assert api_job["static_configs"][0]["targets"] == [f"api:{api_port}"]
    assert "EXPOSE 8000 8265 6379 8080" in (ROOT / "deploy/Dockerfile").read_text()
    datasource = load_yaml(ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml")[0]
    prometheus_port = port_of(datasource["datasources"][0]["url"])
    assert services["prometheus"]["ports"] == [f"127.0.0.1:{prometheus_port}:{prometheus_port}"]
    assert port_of(services["ray-head"]["environment"]["RAY_PROMETHEUS_HOST"]) == prometheus_port
    grafana_port = port_of(services["ray-head"]["environment"]["RAY_GRAFANA_HOST"])
    assert services["grafana"]["ports"] == [f"127.0.0.1:{grafana_port}:{grafana_port}"]
    cluster = next(d for d in manifests() if d["kind"] == "RayCluster")
    head_ports = {p["name"]: p["containerPort"] for p in
                  cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]}  # fmt: skip
    assert head_ports == {"gcs": gcs, "dashboard": dashboard, "metrics": metrics}
    deployment = next(d for d in manifests() if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["ports"][0]["containerPort"] == api_port
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert (
        port_of(env["SIMCLR_RAY_ADDRESS"]) == dashboard
        and port_of(env["SIMCLR_PUBLIC_URL"]) == api_port
    )


def test_the_example_env_file_defines_what_compose_requires():
    required = set(re.findall(r"\$\{([A-Z_]+)(?::\?[^}]*)?\}", COMPOSE.read_text()))
    required |= {s["environment"] for s in compose().get("secrets", {}).values()}
    example = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))  # fmt: skip
    assert required <= set(example), required - set(example)


@pytest.mark.parametrize("path", ["docker-compose.gpu.yml"])
def test_gpu_override_reserves_a_gpu(path):
    worker = load_yaml(ROOT / path)[0]["services"]["ray-worker"]
    [device] = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "nvidia/cuda" in worker["build"]["args"]["BASE_IMAGE"]


def test_the_podman_override_replaces_only_what_this_machine_cannot_have():
    """deploy/smoke.sh starts docker-compose.yml itself; its override swaps images no registry here
    serves (and the image built locally), leaves Grafana out, and hands Prometheus the API token
    from a file: nothing else of the topology may differ."""
    override = load_yaml(ROOT / "deploy" / "local" / "compose.podman.yml")[0]
    assert set(override["services"]) <= set(compose()["services"])
    for name, service in override["services"].items():
        assert set(service) <= {"image", "pull_policy", "profiles"}, name
    assert override["services"]["grafana"]["profiles"] == ["grafana"]
    assert set(override["secrets"]) == set(compose()["secrets"])
    for script in ("deploy/smoke.sh", "deploy/local/postgres-entrypoint.sh"):
        subprocess.run(["bash", "-n", str(ROOT / script)], check=True)  # it parses


def test_the_kuberay_manifests_validate_against_the_kubernetes_schemas():
    """Every built-in resource of deploy/kuberay strictly (no unknown field) against the schemas
    kubernetes-validate bundles; of the RayCluster, whose CRD schema no registry here serves, the
    pod template of its head and of every worker group (the containers, volumes and resources)."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    version = kubernetes_validate.latest_version()
    checked = []
    for doc in manifests():
        if doc["kind"] == "RayCluster":
            spec = doc["spec"]
            for group in (spec["headGroupSpec"], *spec["workerGroupSpecs"]):
                name = group.get("groupName", "head")
                kubernetes_validate.validate({
                    "apiVersion": "v1", "kind": "PodTemplate",
                    "metadata": {"name": f"{doc['metadata']['name']}-{name}"},
                    "template": group["template"],
                }, version, strict=True)  # fmt: skip
                checked.append(f"RayCluster/{name}")
        else:
            kubernetes_validate.validate(doc, version, strict=True)
            checked.append(f"{doc['kind']}/{doc['metadata']['name']}")
    assert "Deployment/simclr-api" in checked and "RayCluster/head" in checked, checked


def strict(schema):
    """A CRD's structural schema made to refuse unknown fields, as the API server's strict field
    validation does (an object with ``properties`` and neither ``additionalProperties`` nor
    ``x-kubernetes-preserve-unknown-fields`` prunes what it does not name)."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {key: strict(value) for key, value in schema.items()}
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):  # fmt: skip
        schema["additionalProperties"] = False
    return schema


@pytest.mark.skipif(
    not os.environ.get("SIMCLR_KUBERAY_CRDS"),
    reason="set SIMCLR_KUBERAY_CRDS to KubeRay's ray-operator/config/crd/bases (not vendored)",
)
def test_the_raycluster_validates_against_the_kuberay_crd():
    """The RayCluster strictly against the openAPIV3Schema of the CRD KubeRay's operator installs
    (its version served for our apiVersion): the whole spec, not only the pod templates."""
    from jsonschema import Draft7Validator

    crds = {}
    for path in Path(os.environ["SIMCLR_KUBERAY_CRDS"]).glob("ray.io_*.yaml"):
        for crd in load_yaml(path):
            for version in crd["spec"]["versions"]:
                key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
                crds[key] = strict(version["schema"]["openAPIV3Schema"])
    checked = []
    for doc in manifests():
        if doc["apiVersion"].startswith("ray.io/"):
            errors = sorted(
                Draft7Validator(crds[doc["apiVersion"], doc["kind"]]).iter_errors(doc),
                key=lambda error: list(error.absolute_path),
            )
            assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors]
            checked.append(doc["kind"])
    assert checked == ["RayCluster"]
