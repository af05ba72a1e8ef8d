"""deploy/kubernetes/: every manifest validated against the Kubernetes JSON schemas (strict: unknown
fields fail) shipped by kubernetes-validate, plus the references a schema cannot see: selectors
match pod labels, Service ports reach container ports, probes and ConfigMaps exist, every tandem
service has its Deployment and Service, the kustomization lists every file."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.unit.test_compose_file import help_env_names

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.31"
TANDEM_SERVICES = ("router", "decode", "prefill", "kvstore", "planner")

Doc = dict[str, Any]


@cache
def documents() -> tuple[tuple[str, Doc], ...]:
    docs = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return tuple(docs)


def of_kind(kind: str) -> list[Doc]:
    return [doc for _, doc in documents() if doc["kind"] == kind]


def containers(deployment: Doc) -> list[Doc]:
    spec = deployment["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def doc_ids() -> list[str]:
    return [f"{name}:{doc['kind']}/{doc['metadata']['name']}" for name, doc in documents()]


@pytest.mark.parametrize("doc", [d for _, d in documents()], ids=doc_ids())
def test_manifest_matches_the_kubernetes_schema(doc: Doc) -> None:
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = ".".join(str(p) for p in error.path)
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {path}: {error.message}")
    except kubernetes_validate.SchemaNotFoundError as error:
        pytest.fail(error.message)


def test_the_validator_rejects_a_broken_manifest() -> None:
    """Strict validation fails on a misspelt field and on a wrong type."""
    deployment = next(yaml.safe_load_all((MANIFESTS / "router.yaml").read_text()))
    deployment["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    deployment = next(yaml.safe_load_all((MANIFESTS / "router.yaml").read_text()))
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_names_are_unique_and_in_one_namespace() -> None:
    seen = set()
    for _, doc in documents():
        key = (doc["kind"], doc["metadata"]["name"])
        assert key not in seen, f"duplicate {key}"
        seen.add(key)
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "tandem", key
    assert [ns["metadata"]["name"] for ns in of_kind("Namespace")] == ["tandem"]


def test_every_tandem_service_has_a_deployment_and_a_service() -> None:
    deployments = {d["metadata"]["name"] for d in of_kind("Deployment")}
    services = {s["metadata"]["name"] for s in of_kind("Service")
                if s["spec"].get("clusterIP") != "None"}  # headless: names each pod (router-pods)
    for name in (*TANDEM_SERVICES, "redis", "redis-replica"):
        assert name in deployments, f"no Deployment {name}"
        assert name in services, f"no Service {name}"
    assert deployments == services, "every Deployment needs its Service and vice versa"


def test_no_fake_planner() -> None:
    if not (ROOT / "services" / "planner" / "__main__.py").exists():
        for deployment in of_kind("Deployment"):
            for container in containers(deployment):
                assert "services.planner" not in container.get("args", [])


def test_deployment_selectors_match_their_pod_labels() -> None:
    for deployment in of_kind("Deployment"):
        selector = deployment["spec"]["selector"]["matchLabels"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector and selector.items() <= labels.items(), deployment["metadata"]["name"]


def selected_deployments(service: Doc) -> list[Doc]:
    selector = service["spec"]["selector"]
    return [
        d for d in of_kind("Deployment")
        if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
    ]


def test_each_service_selects_exactly_one_deployment() -> None:
    for service in of_kind("Service"):
        selected = selected_deployments(service)
        assert len(selected) == 1, (
            f"Service {service['metadata']['name']} selects "
            f"{[d['metadata']['name'] for d in selected]}"
        )


def test_service_ports_reach_container_ports() -> None:
    for service in of_kind("Service"):
        (deployment,) = selected_deployments(service)
        ports = [p for c in containers(deployment) for p in c.get("ports", [])]
        by_name = {p["name"]: p["containerPort"] for p in ports if "name" in p}
        numbers = {p["containerPort"] for p in ports}
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            if isinstance(target, str):
                assert target in by_name, f"{service['metadata']['name']}: no port {target}"
                target = by_name[target]
            assert target in numbers, f"{service['metadata']['name']}: nothing on {target}"


def test_probes_use_declared_ports() -> None:
    for deployment in of_kind("Deployment"):
        for container in containers(deployment):
            ports = container.get("ports", [])
            names = {p["name"] for p in ports if "name" in p}
            numbers = {p["containerPort"] for p in ports}
            for probe_kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = container.get(probe_kind)
                if not probe:
                    continue
                for handler in ("grpc", "httpGet", "tcpSocket"):
                    if handler in probe:
                        port = probe[handler]["port"]
                        assert port in (names if isinstance(port, str) else numbers), (
                            f"{deployment['metadata']['name']}.{probe_kind}: port {port}"
                        )


def test_referenced_configmaps_exist() -> None:
    configmaps = {c["metadata"]["name"]: c.get("data", {}) for c in of_kind("ConfigMap")}
    for deployment in of_kind("Deployment"):
        name = deployment["metadata"]["name"]
        spec = deployment["spec"]["template"]["spec"]
        for container in containers(deployment):
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in configmaps, name
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("configMapKeyRef")
                if ref:
                    assert ref["name"] in configmaps, name
                    assert ref["key"] in configmaps[ref["name"]], f"{name}: key {ref['key']}"
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configmaps, name
        for container in containers(deployment):
            volumes = {v["name"] for v in spec.get("volumes", [])}
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{name}: mount of unknown volume"


def test_images_are_pinned() -> None:
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert version
    for deployment in of_kind("Deployment"):
        for container in containers(deployment):
            image = container["image"]
            repo, _, tag = image.rpartition(":")
            assert repo and tag and tag != "latest" and re.search(r"\d", tag), image
            if repo == "tandem":
                assert tag == version.group(1), image


def test_redis_replica_follows_the_primary_service() -> None:
    (replica,) = [d for d in of_kind("Deployment") if d["metadata"]["name"] == "redis-replica"]
    args = replica["spec"]["template"]["spec"]["containers"][0]["args"]
    primary = args[args.index("--replicaof") + 1]
    port = int(args[args.index("--replicaof") + 2])
    (service,) = [s for s in of_kind("Service") if s["metadata"]["name"] == primary]
    assert port in {p["port"] for p in service["spec"]["ports"]}
    (primary_deployment,) = selected_deployments(service)
    assert primary_deployment["metadata"]["name"] == "redis"


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    files = {p.name for p in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    assert kustomization["namespace"] == "tandem"


def tandem_module(container: Doc) -> str | None:
    args = container.get("args", [])
    match = re.match(r"services\.([a-z_]+)$", args[0]) if args else None
    return match.group(1) if match else None


@pytest.mark.parametrize("module", TANDEM_SERVICES)
def test_environment_variables_are_settings_the_service_knows(module: str) -> None:
    known = help_env_names(module)
    if known is None:
        pytest.skip(f"services/{module}/__main__.py does not exist yet")
    configmaps = {c["metadata"]["name"]: c.get("data", {}) for c in of_kind("ConfigMap")}
    prefix = f"TANDEM_{module.upper()}_"
    for deployment in of_kind("Deployment"):
        for container in containers(deployment):
            if tandem_module(container) != module:
                continue
            names = {env["name"] for env in container.get("env", [])}
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    data = configmaps[source["configMapRef"]["name"]]
                    names.update(k for k in data if k.startswith(prefix))
            for name in names:
                assert name in known, f"{name} is not a setting of services.{module}"
            assert f"{prefix}REDIS_URL" in names, f"{module} has no Redis URL"
