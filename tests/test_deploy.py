"""Offline checks of `deploy/`: the Kubernetes manifests, NATS values, scrape config, dashboard.

No cluster, no kubectl, no network: every YAML is parsed and cross-checked against the others
and against the code (setting names, durable consumer names, metric names).
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.common import subjects
from services.common.roles import ROLES, planner_role

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SERVICES_DIR = ROOT / "services"

SERVICES = ("gateway", "planner", "selector", "executor", "responder")
METRICS_PORT = 9100
GRPC_PORT = 50051
HTTP_PORT = 8000

# The metrics the Grafana dashboard may query (histograms also as _bucket, _sum, _count).
DASHBOARD_METRICS = frozenset(
    {
        "chorus_messages_total",
        "chorus_stage_seconds",
        "chorus_errors_total",
        "chorus_executor_tasks_total",
        "chorus_executor_inference_seconds",
        "chorus_executor_model_load_seconds",
    }
)
HISTOGRAMS = frozenset({"chorus_stage_seconds", "chorus_executor_inference_seconds"})
# Labels Prometheus adds to every series (deploy/prometheus/scrape.yaml, podmonitor.yaml).
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "service", "deployment"})

Doc = dict[str, Any]


# --------------------------------------------------------------------------- loading


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


@cache
def load_docs(path: Path) -> tuple[Any, ...]:
    with path.open(encoding="utf-8") as f:
        return tuple(d for d in yaml.safe_load_all(f) if d is not None)


def kustomization() -> Doc:
    (doc,) = load_docs(K8S / "kustomization.yaml")
    assert isinstance(doc, dict)
    return doc


def is_k8s_file(path: Path) -> bool:
    return path.parent == K8S and path.name != "kustomization.yaml"


def k8s_objects() -> list[tuple[Path, Doc]]:
    """Every Kubernetes object under deploy/: all of k8s/ and any document with a `kind`.

    kustomization.yaml is kustomize's own configuration, not an object sent to the API server.
    """
    found: list[tuple[Path, Doc]] = []
    for path in yaml_files():
        if path == K8S / "kustomization.yaml":
            continue
        for doc in load_docs(path):
            if is_k8s_file(path) or (isinstance(doc, dict) and "kind" in doc):
                found.append((path, doc))
    return found


def applied_objects() -> list[Doc]:
    """The objects `kubectl apply -k deploy/k8s` creates."""
    return [d for r in kustomization()["resources"] for d in load_docs(K8S / r)]


def applied(kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in applied_objects() if d.get("kind") == kind}


def deployments() -> dict[str, Doc]:
    return applied("Deployment")


def containers(deployment: Doc) -> list[Doc]:
    found: list[Doc] = deployment["spec"]["template"]["spec"]["containers"]
    return found


def main_container(deployment: Doc) -> Doc:
    (container,) = containers(deployment)
    return container


def service_of(deployment: Doc) -> str:
    args: list[str] = main_container(deployment)["args"]
    return args[0]


def executors() -> dict[str, Doc]:
    return {n: d for n, d in deployments().items() if service_of(d) == "executor"}


def scaled_objects() -> dict[str, Doc]:
    return applied("ScaledObject")


def names_of(objects: Callable[[], dict[str, Doc]]) -> list[str]:
    """Parameters for per-object tests; a broken tree gives one failing case, not a crash."""
    try:
        return sorted(objects())
    except (OSError, yaml.YAMLError, LookupError, TypeError, ValueError) as e:
        return [f"unloadable: {type(e).__name__}: {e}"]


def flag_values(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == flag]


def container_env(container: Doc) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


@cache
def source_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(SERVICES_DIR.rglob("*.py")))


@cache
def metric_definitions() -> dict[str, tuple[str, frozenset[str]]]:
    """name -> (Counter | Histogram | Gauge, label names), from the prometheus_client calls."""
    pattern = re.compile(
        r'\b(Counter|Histogram|Gauge)\(\s*"(chorus_\w+)"\s*,\s*(?:"[^"]*"\s*)+,\s*\[([^\]]*)\]'
    )
    return {
        m.group(2): (m.group(1), frozenset(re.findall(r'"(\w+)"', m.group(3))))
        for m in pattern.finditer(source_text())
    }


# --------------------------------------------------------------------------- the tree


@pytest.mark.parametrize(
    "relative",
    [
        "Dockerfile",
        "README.md",
        "nats/values.yaml",
        "nats/users.yaml",
        "k8s/kustomization.yaml",
        "k8s/secret.example.yaml",
        "prometheus/scrape.yaml",
        "grafana/chorus.json",
    ],
)
def test_deploy_file_exists(relative: str) -> None:
    assert (DEPLOY / relative).is_file(), f"deploy/{relative} is missing"


def test_deploy_has_yaml() -> None:
    assert len(yaml_files()) >= 8


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses_into_mappings(path: Path) -> None:
    docs = load_docs(path)
    assert docs, f"{path} holds no YAML document"
    for doc in docs:
        assert isinstance(doc, dict), f"{path}: a document is {type(doc).__name__}, not a mapping"


_DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def test_k8s_objects_are_well_formed() -> None:
    objects = k8s_objects()
    assert len(objects) >= 10
    for path, doc in objects:
        where = path.relative_to(DEPLOY)
        assert isinstance(doc.get("apiVersion"), str) and doc["apiVersion"], where
        assert isinstance(doc.get("kind"), str) and doc["kind"], where
        name = (doc.get("metadata") or {}).get("name")
        assert isinstance(name, str), f"{where}: {doc.get('kind')} without metadata.name"
        assert _DNS_1123.match(name) and len(name) <= 63, f"{where}: bad name {name!r}"


def test_no_object_is_defined_twice() -> None:
    keys = [(d["kind"], d["metadata"]["name"]) for d in applied_objects()]
    assert len(keys) == len(set(keys)), sorted(k for k in keys if keys.count(k) > 1)


def test_kustomization_lists_existing_files_and_nothing_is_left_out() -> None:
    kust = kustomization()
    assert kust["kind"] == "Kustomization"
    listed = kust["resources"]
    assert listed, "kustomization.yaml lists no resources"
    for resource in listed:
        assert (K8S / resource).is_file(), f"kustomization.yaml lists missing {resource}"
    on_disk = {
        p.name
        for p in K8S.glob("*.yaml")
        if p.name != "kustomization.yaml" and not p.name.endswith(".example.yaml")
    }
    assert on_disk == set(listed), f"not listed: {sorted(on_disk - set(listed))}"


def test_kustomization_namespace_exists_and_images_cover_deployments() -> None:
    kust = kustomization()
    assert kust["namespace"] in applied("Namespace")
    image_names = {i["name"] for i in kust["images"]}
    for name, deployment in deployments().items():
        for container in containers(deployment):
            image = container["image"].split(":")[0]
            assert image in image_names, f"{name}: image {image} not in kustomization images"


# --------------------------------------------------------------------------- settings


def configmaps() -> dict[str, Doc]:
    return applied("ConfigMap")


def test_configmap_holds_the_cluster_settings() -> None:
    (config,) = configmaps().values()
    data = config["data"]
    assert data["CHORUS_NATS_URL"] == "nats://nats:4222"
    assert data["CHORUS_GRPC_ADDR"] == f"0.0.0.0:{GRPC_PORT}"
    assert data["CHORUS_METRICS_PORT"] == str(METRICS_PORT)
    assert data["CHORUS_LLM_BASE_URL"].startswith(("http://", "https://"))
    assert data["CHORUS_LLM_MODEL"]
    for key, value in data.items():
        assert isinstance(value, str), f"ConfigMap value {key} must be a string, not {value!r}"


def test_configmap_keys_are_settings_the_code_reads() -> None:
    (config,) = configmaps().values()
    for key in config["data"]:
        assert f'"{key}"' in source_text(), f"{key} is read nowhere in services/"


def test_secret_template_holds_the_keys() -> None:
    (secret,) = load_docs(K8S / "secret.example.yaml")
    assert secret["kind"] == "Secret"
    assert set(secret["stringData"]) == {"CHORUS_LLM_API_KEY", "HF_TOKEN"}
    assert '"CHORUS_LLM_API_KEY"' in source_text()


@pytest.mark.parametrize("name", names_of(deployments))
def test_deployment_reads_env_from_existing_configmap_and_secret(name: str) -> None:
    (secret,) = load_docs(K8S / "secret.example.yaml")
    for container in containers(deployments()[name]):
        sources = container.get("envFrom", [])
        config_refs = [s["configMapRef"]["name"] for s in sources if "configMapRef" in s]
        assert config_refs, f"{name}/{container['name']} reads no ConfigMap"
        for ref in config_refs:
            assert ref in configmaps(), f"{name}: ConfigMap {ref} does not exist"
        secret_refs = [s["secretRef"] for s in sources if "secretRef" in s]
        for ref in secret_refs:
            assert ref["name"] == secret["metadata"]["name"], f"{name}: unknown Secret {ref}"
            assert ref.get("optional") is True, f"{name}: the Secret is created by hand"
        for var in container.get("env", []):
            key_ref = var.get("valueFrom", {}).get("configMapKeyRef")
            if key_ref:
                assert key_ref["key"] in configmaps()[key_ref["name"]]["data"]
            if var["name"].startswith("CHORUS_"):
                assert f'"{var["name"]}"' in source_text(), f"{name}: unknown {var['name']}"


# --------------------------------------------------------------------------- deployments


def test_one_deployment_per_service() -> None:
    by_service = {service_of(d) for d in deployments().values()}
    assert by_service == set(SERVICES)
    for service in ("gateway", "planner", "selector", "responder"):
        assert service in deployments(), f"no Deployment named {service}"


@pytest.mark.parametrize("name", names_of(deployments))
def test_deployment_runs_chorus_serve_in_the_right_image(name: str) -> None:
    deployment = deployments()[name]
    container = main_container(deployment)
    service = service_of(deployment)
    assert service in SERVICES
    image = container["image"].split(":")[0]
    expected = "chorus-executor" if service == "executor" else "chorus"
    assert image == expected, f"{name}: {service} needs the {expected} image"
    assert "command" not in container, "the image's entrypoint (chorus serve) must run"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == service
    assert labels["app.kubernetes.io/part-of"] == "chorus"


def test_deployment_selectors_match_their_pods_and_no_other() -> None:
    selectors: list[tuple[str, dict[str, str]]] = []
    for name, deployment in deployments().items():
        match: dict[str, str] = deployment["spec"]["selector"]["matchLabels"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert match.items() <= labels.items(), f"{name}: selector does not match its pods"
        selectors.append((name, match))
    for name, match in selectors:
        for other, deployment in deployments().items():
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            if other != name:
                assert not match.items() <= labels.items(), f"{name} also selects {other}"


def _port(container: Doc, port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    assert port in named, f"{container['name']}: no port named {port}"
    return int(named[port])


@pytest.mark.parametrize("name", names_of(deployments))
def test_deployment_has_http_health_probes_on_the_metrics_port(name: str) -> None:
    container = main_container(deployments()[name])
    assert METRICS_PORT in [p["containerPort"] for p in container["ports"]]
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert probe in container, f"{name} has no {probe}"
        http = container[probe].get("httpGet")
        assert http, f"{name}: {probe} must be an HTTP probe"
        assert http["path"] == path, f"{name}: {probe} must GET {path}"
        assert _port(container, http["port"]) == METRICS_PORT


def test_gateway_serves_grpc_and_http_at_the_edge() -> None:
    gateway = deployments()["gateway"]
    container = main_container(gateway)
    assert {GRPC_PORT, HTTP_PORT} <= {p["containerPort"] for p in container["ports"]}
    grpc_probes = [
        container[p]["grpc"]
        for p in ("startupProbe", "livenessProbe", "readinessProbe")
        if "grpc" in container.get(p, {})
    ]
    assert grpc_probes, "the gateway needs a gRPC health probe"
    assert all(_port(container, g["port"]) == GRPC_PORT for g in grpc_probes)
    pod_labels = gateway["spec"]["template"]["metadata"]["labels"]
    services = [
        s
        for s in applied("Service").values()
        if s["spec"]["selector"].items() <= pod_labels.items()
        and s["spec"].get("clusterIP") != "None"
    ]
    assert services, "no Service selects the gateway pods"
    ports = services[0]["spec"]["ports"]
    for port in (GRPC_PORT, HTTP_PORT):
        exposed = [p for p in ports if p["port"] == port]
        assert exposed and _port(container, exposed[0].get("targetPort", port)) == port
    config = applied("ConfigMap")["chorus-config"]["data"]
    assert config["CHORUS_OPENAI_ADDR"].endswith(f":{HTTP_PORT}")


def test_the_planner_leaves_the_api_to_the_gateway() -> None:
    container = main_container(deployments()["planner"])
    env = {v["name"]: v.get("value") for v in container.get("env", [])}
    assert env.get("CHORUS_PLANNER_HOSTS_GATEWAY") == "0"
    assert GRPC_PORT not in [p["containerPort"] for p in container["ports"]]


def test_every_service_selects_pods_that_exist() -> None:
    all_labels = [d["spec"]["template"]["metadata"]["labels"] for d in deployments().values()]
    for name, service in applied("Service").items():
        selector = service["spec"]["selector"]
        assert any(selector.items() <= labels.items() for labels in all_labels), name


# --------------------------------------------------------------------------- executors


def _gpus(container: Doc, section: str) -> int:
    return int(container.get("resources", {}).get(section, {}).get("nvidia.com/gpu", 0))


@pytest.mark.parametrize("name", names_of(executors))
def test_executor_device_matches_its_gpu_request(name: str) -> None:
    deployment = executors()[name]
    container = main_container(deployment)
    devices = flag_values(container["args"], "--device")
    assert len(devices) == 1, f"{name}: give exactly one --device"
    device = devices[0]
    assert device == "cpu" or re.fullmatch(r"cuda(:\d+)?", device), device
    limit, request = _gpus(container, "limits"), _gpus(container, "requests")
    if device.startswith("cuda"):
        assert limit >= 1, f"{name}: --device {device} without a nvidia.com/gpu limit"
        assert request in (0, limit), f"{name}: GPU request and limit must be equal"
    else:
        assert limit == request == 0, f"{name}: a CPU executor holds a GPU"


@pytest.mark.parametrize("name", names_of(executors))
def test_executor_serves_an_explicit_model_list_and_drains(name: str) -> None:
    deployment = executors()[name]
    container = main_container(deployment)
    models = flag_values(container["args"], "--model")
    assert models, f"{name}: no --model"
    for spec in models:
        task, sep, model = spec.partition("=")
        assert sep and task and model, f"{name}: --model {spec!r} is not TASK=MODEL"
    # Defaults off: the replica serves exactly the --model list, which the scaler mirrors.
    assert container_env(container).get("CHORUS_EXECUTOR_DEFAULTS") == "0"
    grace = deployment["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
    assert grace >= 60, f"{name}: too little time to drain in-flight invocations"


def test_there_are_cpu_and_gpu_executor_groups() -> None:
    gpu = {n for n, d in executors().items() if _gpus(main_container(d), "limits") > 0}
    assert gpu, "no executor Deployment requests nvidia.com/gpu"
    assert set(executors()) - gpu, "no CPU executor Deployment"
    assert "executor-vision" in gpu
    assert "executor-text" in set(executors()) - gpu


# --------------------------------------------------------------------------- KEDA


def jetstream_triggers(scaled: Doc) -> list[dict[str, str]]:
    triggers = scaled["spec"]["triggers"]
    assert triggers, f"{scaled['metadata']['name']} has no triggers"
    for trigger in triggers:
        assert trigger["type"] in ("nats-jetstream", "prometheus")
    return [t["metadata"] for t in triggers if t["type"] == "nats-jetstream"]


def waiting_triggers(scaled: Doc) -> list[dict[str, str]]:
    """Prometheus triggers on the selector's gauge of tasks waiting for a replica."""
    return [t["metadata"] for t in scaled["spec"]["triggers"] if t["type"] == "prometheus"]


def _durables(service: str) -> set[str]:
    text = (SERVICES_DIR / service / "service.py").read_text(encoding="utf-8")
    return set(re.findall(r'durable\s*=\s*"([^"]+)"', text))


def test_scaled_objects_target_existing_deployments_one_each() -> None:
    targets: list[str] = []
    for name, scaled in scaled_objects().items():
        assert scaled["apiVersion"] == "keda.sh/v1alpha1"
        ref = scaled["spec"]["scaleTargetRef"]
        assert ref.get("kind", "Deployment") == "Deployment"
        assert ref["name"] in deployments(), f"{name} scales missing Deployment {ref['name']}"
        targets.append(ref["name"])
    # The gateway consumes nothing from the bus (no lag to scale on): a fixed replica count.
    consuming = [d for d in deployments() if d != "gateway"]
    assert sorted(targets) == sorted(consuming), "each consuming Deployment needs one ScaledObject"
    assert deployments()["gateway"]["spec"]["replicas"] >= 2


@pytest.mark.parametrize("name", names_of(scaled_objects))
def test_scaled_object_reads_the_work_stream(name: str) -> None:
    scaled = scaled_objects()[name]
    namespace = kustomization()["namespace"]
    spec = scaled["spec"]
    assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    if spec["minReplicaCount"] == 0:
        assert waiting_triggers(scaled), (
            f"{name}: at zero replicas no stream lag appears (the selector holds the waiting "
            "tasks), so scaling from zero needs the chorus_selector_waiting_tasks trigger"
        )
    assert "replicas" not in deployments()[spec["scaleTargetRef"]["name"]]["spec"], (
        "KEDA owns the replica count; a fixed `replicas` fights it on every apply"
    )
    for meta in jetstream_triggers(scaled):
        for key, value in meta.items():
            assert isinstance(value, str), f"{name}: trigger metadata {key} must be a string"
        assert meta["stream"] == subjects.WORK_STREAM
        assert meta["account"] == "$G"
        assert int(meta["lagThreshold"]) >= 1
        host, _, port = meta["natsServerMonitoringEndpoint"].rpartition(":")
        assert port == "8222"
        assert host.split(".")[0] in ("nats", "nats-headless")
        if "." in host:
            assert host.split(".")[1] == namespace, f"{name}: NATS is in namespace {namespace}"


@pytest.mark.parametrize("name", names_of(executors))
def test_executor_scaler_consumers_are_the_executor_durables(name: str) -> None:
    (scaled,) = [
        s for s in scaled_objects().values() if s["spec"]["scaleTargetRef"]["name"] == name
    ]
    args = main_container(executors()[name])["args"]
    expected = set()
    for spec in flag_values(args, "--model"):
        task, _, model = spec.partition("=")
        expected.add(subjects.consumer_name("executor", task.strip(), model.strip()))
    consumers = [t["consumer"] for t in jetstream_triggers(scaled)]
    assert len(consumers) == len(set(consumers)), f"{name}: a consumer is listed twice"
    assert set(consumers) == expected


@pytest.mark.parametrize("name", names_of(executors))
def test_a_scale_from_zero_trigger_asks_for_the_groups_task_types(name: str) -> None:
    (scaled,) = [
        s for s in scaled_objects().values() if s["spec"]["scaleTargetRef"]["name"] == name
    ]
    tasks = {
        spec.partition("=")[0].strip()
        for spec in flag_values(main_container(executors()[name])["args"], "--model")
    }
    gauge = "chorus_selector_waiting_tasks"
    assert gauge in (SERVICES_DIR / "selector" / "service.py").read_text(encoding="utf-8")
    for meta in waiting_triggers(scaled):
        asked = re.search(gauge + r'\{task=~"([^"]+)"\}', meta["query"])
        assert asked, f"{name}: the prometheus trigger must read {gauge}{{task=~...}}"
        assert set(asked.group(1).split("|")) == tasks
        assert meta["query"].startswith("max("), "every selector reports the same count"
        assert float(meta["threshold"]) >= 1


def test_every_deployment_has_one_disruption_budget() -> None:
    budgets = applied("PodDisruptionBudget")
    covered = []
    for name, budget in budgets.items():
        spec = budget["spec"]
        assert ("minAvailable" in spec) != ("maxUnavailable" in spec), name
        wanted = spec["selector"]["matchLabels"]
        matched = [
            d
            for d, deployment in deployments().items()
            if wanted.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matched) == 1, f"PodDisruptionBudget {name} matches {matched}"
        covered += matched
        if spec.get("minAvailable"):  # a floor needs replicas above it, or drains block
            minimum = scaled_objects()[matched[0]]["spec"]["minReplicaCount"]
            assert minimum > spec["minAvailable"], f"{name}: minAvailable blocks every drain"
    assert sorted(covered) == sorted(deployments())


def test_stage_scalers_name_durables_the_services_create() -> None:
    seen: dict[str, set[str]] = {}
    for scaled in scaled_objects().values():
        target = deployments()[scaled["spec"]["scaleTargetRef"]["name"]]
        service = service_of(target)
        if service == "executor":
            continue
        durables = _durables(service)
        assert durables, f"found no durable consumer in services/{service}/service.py"
        consumers = {t["consumer"] for t in jetstream_triggers(scaled)}
        assert consumers <= durables, f"{service}: {sorted(consumers - durables)} do not exist"
        seen[service] = consumers
    assert seen.get("planner") == {"planner"}


def test_nats_monitoring_is_on_for_the_scaler() -> None:
    (values,) = load_docs(DEPLOY / "nats" / "values.yaml")
    config = values["config"]
    assert config["monitor"]["enabled"] is True
    assert config["monitor"]["port"] == 8222


# --------------------------------------------------------------------------- NATS


def test_nats_values_run_a_clustered_jetstream_on_disk() -> None:
    (values,) = load_docs(DEPLOY / "nats" / "values.yaml")
    cluster = values["config"]["cluster"]
    assert cluster["enabled"] is True
    assert cluster["replicas"] == 3
    jetstream = values["config"]["jetstream"]
    assert jetstream["enabled"] is True
    assert jetstream["fileStore"]["enabled"] is True
    assert jetstream["fileStore"]["pvc"]["enabled"] is True
    assert re.fullmatch(r"\d+(Mi|Gi|Ti)", jetstream["fileStore"]["pvc"]["size"])


@cache
def render_users() -> Any:
    """deploy/nats/render_users.py, which writes deploy/nats/users.yaml."""
    spec = importlib.util.spec_from_file_location(
        "render_users", DEPLOY / "nats" / "render_users.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nats_users() -> dict[str, Doc]:
    (values,) = load_docs(DEPLOY / "nats" / "users.yaml")
    return {u["user"]: u for u in values["config"]["merge"]["authorization"]["users"]}


def test_nats_users_are_rendered_from_the_roles() -> None:
    """users.yaml is what `make nats-users` writes from services/common/roles.py now."""
    text = (DEPLOY / "nats" / "users.yaml").read_text(encoding="utf-8")
    assert text == render_users().render(), "deploy/nats/users.yaml is stale: make nats-users"


def test_nats_users_have_the_permissions_of_their_roles() -> None:
    users = nats_users()
    expected = {"gateway", "planner", "selector", "responder", "integrator", *executors()}
    assert set(users) == expected
    # The planner runs without the gateway here: it has no front-door permissions.
    assert users["planner"]["permissions"] == planner_role(hosts_gateway=False).permissions()
    assert users["gateway"]["permissions"] == ROLES["gateway"].permissions()
    assert "chorus.result" not in users["integrator"]["permissions"]["publish"]["allow"]
    (values,) = load_docs(DEPLOY / "nats" / "users.yaml")
    passwords = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in values["container"]["env"]}
    for name, user in users.items():
        variable = re.fullmatch(r"<< \$(\w+) >>", user["password"])
        assert variable, f"{name}: the password is not a variable of the container"
        assert passwords[variable.group(1)] == {"name": "chorus-nats-users", "key": name}
    (chart,) = load_docs(DEPLOY / "nats" / "values.yaml")
    assert "authorization" not in chart["config"].get("merge", {})  # one place: users.yaml
    assert "env" not in chart.get("container", {})  # Helm would replace one list by the other


@pytest.mark.parametrize("name", names_of(executors))
def test_an_executor_user_consumes_exactly_what_its_deployment_serves(name: str) -> None:
    """Its consumers are those the KEDA scaler of its group names: its --model list."""
    allowed = nats_users()[name]["permissions"]["publish"]["allow"]
    prefix = f"$JS.API.CONSUMER.MSG.NEXT.{subjects.WORK_STREAM}."
    consumers = {p.removeprefix(prefix) for p in allowed if p.startswith(prefix)}
    args = main_container(executors()[name])["args"]
    served = [m.partition("=") for m in flag_values(args, "--model")]
    assert consumers == {subjects.consumer_name("executor", t, m) for t, _, m in served}
    assert not any(p.startswith("$JS.API.CONSUMER.CREATE.CHORUS_WORK.selector") for p in allowed)


@pytest.mark.parametrize("name", names_of(deployments))
def test_each_service_connects_as_its_own_role(name: str) -> None:
    env = {v["name"]: v for v in main_container(deployments()[name]).get("env", [])}
    user = (
        name if service_of(deployments()[name]) == "executor" else service_of(deployments()[name])
    )
    assert env["CHORUS_NATS_USER"]["value"] == user
    ref = env["CHORUS_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "chorus-nats-users", "key": user}


def test_the_gateway_reads_its_api_keys_from_a_secret() -> None:
    gateway = deployments()["gateway"]
    env = {v["name"]: v.get("value") for v in main_container(gateway).get("env", [])}
    mounts = {m["mountPath"]: m["name"] for m in main_container(gateway)["volumeMounts"]}
    volumes = {v["name"]: v for v in gateway["spec"]["template"]["spec"]["volumes"]}
    keys_dir = str(Path(env["CHORUS_API_KEYS"]).parent)
    assert volumes[mounts[keys_dir]]["secret"]["secretName"] == "chorus-api-keys"


def test_network_policies_deny_by_default_and_open_the_gateway_and_nats_to_chorus() -> None:
    policies = applied("NetworkPolicy")
    deny = policies["default-deny-ingress"]["spec"]
    assert deny["podSelector"] == {} and "ingress" not in deny
    gateway_ports = {
        p["port"] for r in policies["gateway-api"]["spec"]["ingress"] for p in r["ports"]
    }
    assert gateway_ports == {GRPC_PORT, HTTP_PORT}
    (clients, *_) = policies["nats-clients"]["spec"]["ingress"]
    assert clients["ports"] == [{"port": 4222}]
    assert clients["from"] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "chorus"}}}
    ]


# --------------------------------------------------------------------------- Prometheus


def test_scrape_config_keeps_the_metrics_port_of_chorus_pods() -> None:
    (scrape,) = load_docs(DEPLOY / "prometheus" / "scrape.yaml")
    (job,) = [j for j in scrape["scrape_configs"] if j["job_name"] == "chorus"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    (sd,) = job["kubernetes_sd_configs"]
    assert sd["role"] == "pod"
    assert kustomization()["namespace"] in sd["namespaces"]["names"]
    keeps = {
        tuple(r["source_labels"]): r["regex"]
        for r in job["relabel_configs"]
        if r.get("action") == "keep"
    }
    port_name = keeps[("__meta_kubernetes_pod_container_port_name",)]
    part_of = keeps[("__meta_kubernetes_pod_label_app_kubernetes_io_part_of",)]
    for name, deployment in deployments().items():
        container = main_container(deployment)
        assert _port(container, port_name) == METRICS_PORT, name
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert re.fullmatch(part_of, labels["app.kubernetes.io/part-of"]), name


def test_pod_monitor_scrapes_the_metrics_port() -> None:
    (monitor,) = load_docs(DEPLOY / "prometheus" / "podmonitor.yaml")
    assert monitor["kind"] == "PodMonitor"
    selector = monitor["spec"]["selector"]["matchLabels"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    for name, deployment in deployments().items():
        assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
        assert _port(main_container(deployment), endpoint["port"]) == METRICS_PORT, name


# --------------------------------------------------------------------------- Grafana

_PROMQL_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "inf", "nan", "group_left", "group_right"}
)
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def _strip(expr: str) -> str:
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    return re.sub(r"\[[^\]]*\]", "", expr)  # range selectors, [$__rate_interval]


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects (not functions, labels or keywords)."""
    rest = _GROUPING.sub("", re.sub(r"\{[^}]*\}", "", _strip(expr)))
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", rest):
        if rest[match.end() :].lstrip().startswith("("):
            continue  # a function or aggregation
        if match.group().lower() not in _PROMQL_KEYWORDS:
            names.add(match.group())
    return names


def label_names(expr: str) -> set[str]:
    """Labels an expression groups by or matches on."""
    expr = _strip(expr)
    labels = {w for g in _GROUPING.findall(expr) for w in re.findall(r"\w+", g)}
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        labels |= set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
    return labels


def base_metric(name: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name.removesuffix(suffix) in HISTOGRAMS:
            return name.removesuffix(suffix)
    return name


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, stage) (rate(foo_seconds_bucket{stage="a b"}'
        "[$__rate_interval]))) / on (stage) group_left bar_total and ignoring(x) baz"
    )
    assert metric_names(expr) == {"foo_seconds_bucket", "bar_total", "baz"}
    assert label_names(expr) == {"le", "stage", "x"}
    assert metric_names("max by (task, model) (chorus_executor_model_load_seconds)") == {
        "chorus_executor_model_load_seconds"
    }


def dashboard() -> Doc:
    with (DEPLOY / "grafana" / "chorus.json").open(encoding="utf-8") as f:
        doc = json.load(f)
    assert isinstance(doc, dict)
    return doc


def all_panels(panels: Iterable[Doc]) -> list[Doc]:
    flat: list[Doc] = []
    for panel in panels:
        flat.append(panel)
        flat.extend(all_panels(panel.get("panels", [])))
    return flat


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in all_panels(dashboard()["panels"]) for t in p.get("targets", [])]


def test_dashboard_is_a_grafana_dashboard() -> None:
    doc = dashboard()
    assert doc["title"] and doc["uid"]
    panels = all_panels(doc["panels"])
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]


def test_dashboard_queries_only_known_metrics_and_all_of_them() -> None:
    exprs = dashboard_exprs()
    assert exprs
    used = set()
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        for name in names:
            assert base_metric(name) in DASHBOARD_METRICS, f"unknown metric {name} in {expr!r}"
            used.add(base_metric(name))
        if "histogram_quantile" in expr:
            assert any(n.endswith("_bucket") for n in names), f"quantile of no histogram: {expr}"
    assert used == DASHBOARD_METRICS, f"no panel for {sorted(DASHBOARD_METRICS - used)}"


def test_dashboard_metrics_and_labels_are_what_the_code_exports() -> None:
    defined = metric_definitions()
    for name in DASHBOARD_METRICS:
        assert name in defined, f"{name} is defined nowhere in services/"
        kind, _ = defined[name]
        assert (kind == "Histogram") == (name in HISTOGRAMS), f"{name} is a {kind}"
    for expr in dashboard_exprs():
        known = set(TARGET_LABELS)
        for name in metric_names(expr):
            known |= defined[base_metric(name)][1]
            if name.endswith("_bucket"):
                known.add("le")
        assert label_names(expr) <= known, f"unknown labels in {expr!r}"


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_builds_both_images_and_runs_chorus_serve() -> None:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    instructions = [
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    ]
    assert instructions[0] == "FROM python:3.11-slim"
    assert any(re.fullmatch(r'ARG EXTRAS(="")?', i) for i in instructions)
    assert "pip install ." in text
    assert 'pip install ".[${EXTRAS}]"' in text
    (entrypoint,) = [i for i in instructions if i.startswith("ENTRYPOINT")]
    assert json.loads(entrypoint.removeprefix("ENTRYPOINT")) == ["chorus", "serve"]
    assert any(i.startswith("USER ") and not i.endswith(" root") for i in instructions)
