"""k8s/: render every kustomization with kubectl's kustomize, validate each object against the Kubernetes
schemas (kubernetes-validate, offline), and check that the manifests agree with the project: every
FLEET2BAN_* variable is a setting, every container's settings load, every command line parses in the real
CLI, ports/probes/selectors/mounts line up, and the security rules of issue 9 hold."""

from __future__ import annotations

import ipaddress
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from deploy_checks import (
    DOCS,
    K8S,
    KUSTOMIZATIONS,
    Invocation,
    check_invocation,
    container_argv,
    container_env,
    containers,
    pod_labels,
    pod_spec,
    render,
    selector_matches,
)

from fleet2ban.contract import Topics
from fleet2ban.settings import CONFIG_ENV, Settings, env_names, load_settings

# Oldest Kubernetes these manifests support (documented in docs/deploying.md) and the newest schemas shipped.
K8S_VERSIONS = ("1.28.0", "latest")
IDS = [str(k.relative_to(K8S)) for k in KUSTOMIZATIONS]
CRD_GROUPS = ("monitoring.coreos.com/",)


def _safe_render(k: Path) -> list[dict[str, Any]]:
    try:
        return render(k)
    except Exception:
        return []  # test_kustomization_renders reports why


def _workload_containers() -> list[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    """(kustomization, object/container id, object, container) for every container of every workload."""
    out = []
    for k, kid in zip(KUSTOMIZATIONS, IDS, strict=True):
        for obj in _safe_render(k):
            for c in containers(obj):
                out.append((kid, f"{kid}:{obj['kind']}/{obj['metadata']['name']}/{c['name']}", obj, c))
    return out


WORKLOAD_CONTAINERS = _workload_containers()
FLEET2BAN_CONTAINERS = [w for w in WORKLOAD_CONTAINERS if "command" not in w[3]]


def _by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def _one(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _container(obj: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in containers(obj) if c["name"] == name)


def _port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return int(p["containerPort"])
    raise AssertionError(f"container {container['name']} declares no port named {port!r}")


def _config_text(objs: list[dict[str, Any]], obj: dict[str, Any]) -> str:
    """The settings file a workload mounts (the ConfigMap behind its FLEET2BAN_CONFIG)."""
    spec = pod_spec(obj)
    assert spec is not None
    cm_names = [v["configMap"]["name"] for v in spec.get("volumes", []) if "configMap" in v]
    assert cm_names, f"{obj['metadata']['name']} mounts no ConfigMap"
    cm = _one(objs, "ConfigMap", cm_names[0])
    text: str = cm["data"]["config.yaml"]
    return text


def _mounts(container: dict[str, Any]) -> list[tuple[PurePosixPath, bool, str]]:
    return [
        (PurePosixPath(m["mountPath"]), bool(m.get("readOnly", False)), m["name"])
        for m in container.get("volumeMounts", [])
    ]


def _mount_of(container: dict[str, Any], path: Path | str) -> tuple[PurePosixPath, bool, str] | None:
    p = PurePosixPath(str(path))
    best = None
    for mount in _mounts(container):
        if (p == mount[0] or mount[0] in p.parents) and (
            best is None or len(mount[0].parts) > len(best[0].parts)
        ):
            best = mount
    return best


def _settings_for(
    objs: list[dict[str, Any]], obj: dict[str, Any], c: dict[str, Any], tmp_path: Path, env_patch: Any
) -> Settings:
    env = container_env(c)
    assert env.get(CONFIG_ENV) == "/etc/fleet2ban/config.yaml", f"{c['name']}: FLEET2BAN_CONFIG not set"
    cfg = tmp_path / "config.yaml"
    cfg.write_text(_config_text(objs, obj), encoding="utf-8")
    env[CONFIG_ENV] = str(cfg)
    for name, value in env.items():
        env_patch.setenv(name, value)
    return load_settings()


# ---------------------------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=IDS)
def test_kustomization_renders(kustomization: Path) -> None:
    objs = render(kustomization)
    kinds = {o["kind"] for o in objs}
    assert {"DaemonSet", "Deployment", "PodDisruptionBudget", "Job", "ConfigMap", "ServiceAccount"} <= kinds
    assert "NetworkPolicy" in kinds and "Service" in kinds


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=IDS)
def test_objects_valid_against_kubernetes_schemas(kustomization: Path, version: str) -> None:
    import kubernetes_validate

    v = kubernetes_validate.latest_version() if version == "latest" else version
    problems = []
    for obj in render(kustomization):
        if obj["apiVersion"].startswith(CRD_GROUPS):
            continue  # custom resources: test_servicemonitors_* below
        try:
            kubernetes_validate.validate(obj, v, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            problems.append(f"{obj['kind']}/{obj['metadata']['name']}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.append(
                f"{obj['kind']}/{obj['metadata']['name']}: no schema for {obj['apiVersion']}: {exc}"
            )
    assert not problems, "\n".join(problems)


def test_schema_validation_catches_mistakes() -> None:
    """The validator really checks nested fields (strict), so a green run above means something."""
    import copy

    import kubernetes_validate

    ds = _one(render(KUSTOMIZATIONS[0]), "DaemonSet", "fleet2ban-node")
    bad = copy.deepcopy(ds)
    sc = _container(bad, "enforcer")["securityContext"]
    sc["capabilites"] = sc.pop("capabilities")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, "1.28.0", strict=True)


def test_overlay_sets_namespace_images_and_real_kafka() -> None:
    objs = render(K8S / "overlays" / "example")
    ns = _one(objs, "Namespace", "fleet2ban")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    for obj in objs:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "fleet2ban", obj["metadata"]["name"]
        for c in containers(obj):
            assert c["image"].startswith("registry.example.com/"), c["image"]
            assert ":" in c["image"].rsplit("/", 1)[1], f"{c['image']}: pin a tag"


# ----------------------------------------------------------------------------------- settings and CLI


@pytest.mark.parametrize(
    ("kid", "cid", "obj", "c"), FLEET2BAN_CONTAINERS, ids=[w[1] for w in FLEET2BAN_CONTAINERS]
)
def test_env_names_are_settings(kid: str, cid: str, obj: dict[str, Any], c: dict[str, Any]) -> None:
    accepted = env_names() | {CONFIG_ENV}
    unknown = [
        e["name"]
        for e in c.get("env", [])
        if e["name"].startswith("FLEET2BAN_") and e["name"] not in accepted
    ]
    assert not unknown, f"{cid}: not settings: {unknown}"


@pytest.mark.parametrize(
    ("kid", "cid", "obj", "c"), FLEET2BAN_CONTAINERS, ids=[w[1] for w in FLEET2BAN_CONTAINERS]
)
def test_container_settings_load_and_match_the_pod(
    kid: str, cid: str, obj: dict[str, Any], c: dict[str, Any], tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    objs = render(K8S / kid)
    s = _settings_for(objs, obj, c, tmp_path, clean_env)
    assert s.kafka.bootstrap_servers, f"{cid}: no kafka.bootstrap_servers: it would start a local Kafka"
    if s.kafka.ssl_ca_location is not None:
        assert _mount_of(c, s.kafka.ssl_ca_location), f"{cid}: {s.kafka.ssl_ca_location} is not mounted"
    long_running = obj["kind"] in ("DaemonSet", "Deployment")
    if long_running:
        probe_port = _port_number(c, c["livenessProbe"]["httpGet"]["port"])
        assert s.metrics.port == probe_port, (
            f"{cid}: metrics.port {s.metrics.port} but probes ask {probe_port}"
        )
        assert s.metrics.bind in ("0.0.0.0", "::"), f"{cid}: kubelet probes need metrics on every address"
    role = c["name"]
    if s.identity.key_path is not None:
        mount = _mount_of(c, s.identity.key_path)
        assert mount and mount[1], f"{cid}: the host key {s.identity.key_path} must be on a read-only mount"
        spec = pod_spec(obj)
        assert spec is not None
        vol = next(v for v in spec["volumes"] if v["name"] == mount[2])
        assert "hostPath" in vol, f"{cid}: the host key is the node's own (hostPath), not the cluster's"
    if s.identity.public_keys_file is not None:
        mount = _mount_of(c, s.identity.public_keys_file)
        assert mount and mount[1], f"{cid}: {s.identity.public_keys_file} must be on a read-only mount"
    if kid.endswith("example") and role in ("shipper", "enforcer"):
        assert s.identity.key_path is not None, f"{cid}: the example overlay signs with the host key"
    if kid.endswith("example") and role == "processor":
        assert s.identity.public_keys_file is not None, f"{cid}: the example overlay verifies host keys"
    if role == "shipper":
        assert s.shipper.log_path is not None
        mount = _mount_of(c, s.shipper.log_path)
        assert mount and mount[1], f"{cid}: the AMPS log {s.shipper.log_path} must be on a read-only mount"
        assert s.shipper.host == "amps-node-1", f"{cid}: shipper.host must be the node name"
        ckpt = s.shipper.checkpoint_path or s.resolved_state_dir() / f"shipper-{s.shipper.host}.checkpoint"
        mount = _mount_of(c, ckpt)
        assert mount and not mount[1], f"{cid}: checkpoint {ckpt} must be on a writable mount"
        spec = pod_spec(obj)
        assert spec is not None
        vol = next(v for v in spec["volumes"] if v["name"] == mount[2])
        assert "hostPath" in vol, f"{cid}: the checkpoint must outlive the pod (hostPath)"
    if role == "enforcer":
        assert s.enforcer.host == "amps-node-1", f"{cid}: enforcer.host must be the node name"
        assert s.enforcer.backend in ("auto", "nftables", "ipset", "iptables")
    if role == "processor":
        data_dir = s.processor.data_dir or s.resolved_state_dir() / "processor"
        mount = _mount_of(c, data_dir)
        assert mount and not mount[1], f"{cid}: processor.data_dir {data_dir} must be on a writable volume"


@pytest.mark.parametrize(
    ("kid", "cid", "obj", "c"), FLEET2BAN_CONTAINERS, ids=[w[1] for w in FLEET2BAN_CONTAINERS]
)
def test_container_command_exists_in_cli(
    kid: str, cid: str, obj: dict[str, Any], c: dict[str, Any], clean_env: pytest.MonkeyPatch
) -> None:
    """What the container runs (image entrypoint ``fleet2ban`` + args) parses in the real CLI."""
    argv = container_argv(c)
    assert argv, f"{cid}: no args: the image's default CMD is --help"
    check_invocation(Invocation(cid, argv), container_env(c), clean_env)


def test_only_the_state_dir_init_container_overrides_the_entrypoint() -> None:
    """Commands other than ``fleet2ban`` are base-image tools; there is exactly one, and it is coreutils'."""
    overridden = [(cid, c["command"]) for _, cid, _, c in WORKLOAD_CONTAINERS if "command" in c]
    assert overridden, "expected the state-dir init container"
    for cid, command in overridden:
        assert cid.endswith("/state-dir"), cid
        assert command[0] == "install", f"{cid}: {command}"


def test_topics_job_creates_the_design_topics(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for k in KUSTOMIZATIONS:
        objs = render(k)
        job = _one(objs, "Job", "fleet2ban-topics")
        c = _container(job, "topics")
        assert container_argv(c)[:2] == ["topics", "create"]
        s = _settings_for(objs, job, c, tmp_path, clean_env)
        specs = {sp.name: sp for sp in Topics(s.kafka.topic_prefix).specs(s.kafka.partitions)}
        assert specs[Topics(s.kafka.topic_prefix).bans].config["cleanup.policy"] == "compact"
        deploy = _one(objs, "Deployment", "fleet2ban-processor")
        assert deploy["spec"]["replicas"] <= s.kafka.partitions, "replicas beyond partitions sit idle"
        assert s.kafka.replication_factor >= 3, "production topics want replication_factor >= 3"


# ------------------------------------------------------------------------------------------ security


@pytest.mark.parametrize(
    ("kid", "cid", "obj", "c"), WORKLOAD_CONTAINERS, ids=[w[1] for w in WORKLOAD_CONTAINERS]
)
def test_container_security_context(kid: str, cid: str, obj: dict[str, Any], c: dict[str, Any]) -> None:
    spec = pod_spec(obj)
    assert spec is not None
    pod_sc = spec.get("securityContext", {})
    sc = c.get("securityContext", {})
    assert sc.get("allowPrivilegeEscalation") is False, cid
    assert sc.get("readOnlyRootFilesystem") is True, cid
    assert not sc.get("privileged", False), cid
    caps = sc.get("capabilities", {})
    assert caps.get("drop") == ["ALL"], cid
    added = set(caps.get("add", []))
    run_as_user = sc.get("runAsUser", pod_sc.get("runAsUser"))
    non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
    if c["name"] == "enforcer":
        assert added == {"NET_ADMIN", "NET_RAW"}, f"{cid}: exactly NET_ADMIN + NET_RAW, got {added}"
        assert run_as_user == 0
    elif c["name"] == "state-dir":
        assert added <= {"CHOWN", "FOWNER"}, cid
    else:
        assert not added, f"{cid}: no capabilities for {c['name']}"
        assert non_root is True and isinstance(run_as_user, int) and run_as_user >= 1000, cid
    assert (pod_sc.get("seccompProfile") or sc.get("seccompProfile", {})).get("type") == "RuntimeDefault", cid
    assert spec.get("automountServiceAccountToken") is False, f"{cid}: no API token needed"


@pytest.mark.parametrize(
    ("kid", "cid", "obj", "c"), WORKLOAD_CONTAINERS, ids=[w[1] for w in WORKLOAD_CONTAINERS]
)
def test_container_resources_and_probes(kid: str, cid: str, obj: dict[str, Any], c: dict[str, Any]) -> None:
    res = c.get("resources", {})
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(res.get(kind, {})), f"{cid}: resources.{kind} cpu and memory"
    spec = pod_spec(obj)
    assert spec is not None
    if obj["kind"] in ("DaemonSet", "Deployment") and c not in spec.get("initContainers", []):
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert probe in c, f"{cid}: {probe}"
            get = c[probe]["httpGet"]
            assert get["path"] in ("/healthz", "/readyz"), f"{cid}: {probe} path"
            _port_number(c, get["port"])


def test_node_daemonset_layout() -> None:
    for k in KUSTOMIZATIONS:
        objs = render(k)
        ds = _one(objs, "DaemonSet", "fleet2ban-node")
        spec = pod_spec(ds)
        assert spec is not None
        assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
        assert spec["nodeSelector"].get("fleet2ban.io/amps-node") == "true"
        vols = {v["name"]: v for v in spec["volumes"]}
        shipper, enforcer = _container(ds, "shipper"), _container(ds, "enforcer")
        logs = next(m for m in shipper["volumeMounts"] if m["mountPath"] == "/var/log/amps")
        assert logs["readOnly"] is True and "hostPath" in vols[logs["name"]]
        lock = next(m for m in enforcer["volumeMounts"] if m["mountPath"] == "/run/xtables.lock")
        assert vols[lock["name"]]["hostPath"] == {"path": "/run/xtables.lock", "type": "FileOrCreate"}
        assert not any(m["mountPath"] == "/var/log/amps" for m in enforcer["volumeMounts"])
        assert shipper["image"].rsplit("/", 1)[-1].startswith("fleet2ban:")
        assert enforcer["image"].rsplit("/", 1)[-1].startswith("fleet2ban-enforcer:"), "enforcer image target"
        ports = [p["containerPort"] for c in (shipper, enforcer) for p in c["ports"]]
        assert len(ports) == len(set(ports)), "hostNetwork: the containers' ports must differ"


def test_processor_deployment_pdb_and_volume() -> None:
    for k in KUSTOMIZATIONS:
        objs = render(k)
        deploy = _one(objs, "Deployment", "fleet2ban-processor")
        assert deploy["spec"]["replicas"] >= 2
        pdb = _one(objs, "PodDisruptionBudget", "fleet2ban-processor")
        assert selector_matches(pdb["spec"]["selector"], pod_labels(deploy))
        assert not selector_matches(
            pdb["spec"]["selector"], pod_labels(_one(objs, "DaemonSet", "fleet2ban-node"))
        )
        spec = pod_spec(deploy)
        assert spec is not None
        state = next(v for v in spec["volumes"] if v["name"] == "state")
        assert "emptyDir" in state or "persistentVolumeClaim" in state


# ------------------------------------------------------------------------------------ references


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=IDS)
def test_references_resolve(kustomization: Path) -> None:
    objs = render(kustomization)
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    secrets: set[str] = set()
    for obj in objs:
        spec = pod_spec(obj)
        if spec is None:
            continue
        assert ("ServiceAccount", spec["serviceAccountName"]) in names
        for v in spec.get("volumes", []):
            if "configMap" in v:
                assert ("ConfigMap", v["configMap"]["name"]) in names, v
            if "secret" in v:
                secrets.add(v["secret"]["secretName"])
        for c in containers(obj):
            mounted = {m["name"] for m in c.get("volumeMounts", [])}
            assert mounted <= {v["name"] for v in spec.get("volumes", [])}, c["name"]
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    secrets.add(ref["name"])
    docs = DOCS.read_text(encoding="utf-8")
    undocumented = sorted(s for s in secrets if s not in docs)
    assert not undocumented, (
        f"Secrets the manifests use but docs/deploying.md does not explain: {undocumented}"
    )


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=IDS)
def test_services_select_pods_and_ports(kustomization: Path) -> None:
    objs = render(kustomization)
    workloads = [o for o in objs if pod_spec(o) is not None and o["kind"] != "Job"]
    for svc in _by_kind(objs, "Service"):
        selected = [
            w for w in workloads if selector_matches({"matchLabels": svc["spec"]["selector"]}, pod_labels(w))
        ]
        assert len(selected) == 1, f"Service {svc['metadata']['name']} selects {len(selected)} workloads"
        port_names = {p["name"] for c in containers(selected[0], init=False) for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in port_names, f"{svc['metadata']['name']}: {port['targetPort']}"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=IDS)
def test_prometheus_annotations_name_a_container_port(kustomization: Path) -> None:
    for obj in render(kustomization):
        if obj["kind"] not in ("DaemonSet", "Deployment"):
            continue
        ann = obj["spec"]["template"]["metadata"].get("annotations", {})
        assert ann.get("prometheus.io/scrape") == "true", obj["metadata"]["name"]
        assert ann.get("prometheus.io/path") == "/metrics"
        ports = {p["containerPort"] for c in containers(obj, init=False) for p in c.get("ports", [])}
        assert int(ann["prometheus.io/port"]) in ports


def test_servicemonitors_select_services_and_ports() -> None:
    objs = render(K8S / "overlays" / "example")
    monitors = [o for o in objs if o["kind"] == "ServiceMonitor"]
    assert {m["metadata"]["name"] for m in monitors} == {"fleet2ban-node", "fleet2ban-processor"}
    services = _by_kind(objs, "Service")
    scraped: set[str] = set()
    for mon in monitors:
        assert mon["apiVersion"] == "monitoring.coreos.com/v1"
        selected = [s for s in services if selector_matches(mon["spec"]["selector"], s["metadata"]["labels"])]
        assert len(selected) == 1, (
            f"ServiceMonitor {mon['metadata']['name']} selects {len(selected)} Services"
        )
        port_names = {p["name"] for p in selected[0]["spec"]["ports"]}
        for ep in mon["spec"]["endpoints"]:
            assert set(ep) <= {
                "port",
                "path",
                "interval",
                "scrapeTimeout",
                "relabelings",
                "metricRelabelings",
            }
            assert ep["port"] in port_names and ep["path"] == "/metrics"
            scraped.add(ep["port"])
    all_ports = {p["name"] for s in services for p in s["spec"]["ports"]}
    assert scraped == all_ports, "every metrics port is scraped"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=IDS)
def test_network_policies(kustomization: Path) -> None:
    objs = render(kustomization)
    policies = {p["metadata"]["name"]: p for p in _by_kind(objs, "NetworkPolicy")}
    deny = policies["fleet2ban-default-deny"]["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny
    workloads = [o for o in objs if pod_spec(o) is not None]
    for name, pol in policies.items():
        if name == "fleet2ban-default-deny":
            continue
        selected = [w for w in workloads if selector_matches(pol["spec"]["podSelector"], pod_labels(w))]
        assert selected, f"NetworkPolicy {name} selects no pod"
        assert not any(pod_spec(w).get("hostNetwork") for w in selected), (
            f"{name}: hostNetwork pods ignore it"
        )  # type: ignore[union-attr]
    egress = policies["fleet2ban-kafka-egress"]["spec"]["egress"]
    for rule in egress:
        ports = {p["port"] for p in rule["ports"]}
        assert ports == {53} or ports <= {9092, 9093, 9094}, f"egress only to Kafka and DNS: {ports}"
        for peer in rule["to"]:
            if "ipBlock" in peer:
                net = ipaddress.ip_network(peer["ipBlock"]["cidr"])
                assert net.prefixlen >= 8, f"{net}: too wide for 'only Kafka'"
    ingress = policies["fleet2ban-metrics-ingress"]["spec"]["ingress"]
    assert [p["port"] for r in ingress for p in r["ports"]] == [9108]


def test_config_files_are_valid_settings_on_their_own(clean_env: pytest.MonkeyPatch) -> None:
    """The settings files under k8s/ load as they are (SASL user name given as it would be from a Secret)."""
    for path in sorted(K8S.rglob("config.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert isinstance(data, dict), path
        clean_env.setenv("FLEET2BAN_KAFKA__SASL_USERNAME", "from-secret")
        settings = load_settings(path)
        assert settings.kafka.bootstrap_servers, path
