"""The Kubernetes manifests of ``deploy/k8s/``: every overlay renders with ``kubectl
kustomize``; its core kinds validate against Kubernetes' own schemas (kubernetes-validate,
strict: an unknown field fails) and its custom resources against the operators' CRD
schemas vendored in ``tests/deploy/crds/`` (unknown fields fail too, as kubectl's strict
field validation makes them); and what the manifests say agrees with the code: the
topics with the topic specs, the containers' arguments with the CLI, the Kafka settings
with librdkafka, the autoscaler with the workers' consumer group and the topics.

Terms: an *overlay* is a directory of ``deploy/k8s/overlays/``; its *rendering* is the
list of resources ``kubectl kustomize`` prints for it.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import click
import jsonschema
import kubernetes_validate
import pytest
import yaml

from corestate.cli.main import cli
from corestate.connectors.kafka_topics import DEFAULT_PREFIX, TOPICS, client_config, spec

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
CRDS = Path(__file__).resolve().parent / "crds"
OVERLAYS = ("dev", "production")
KUBERNETES_VERSION = "1.37.0"  # the newest kubernetes-validate 1.37.0 has schemas for

CRD_SCHEMAS = {
    ("kafka.strimzi.io/v1", "KafkaTopic"): "kafka.strimzi.io_kafkatopics.v1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_scaledobjects.v1alpha1.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda.sh_triggerauthentications.v1alpha1.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "monitoring.coreos.com_podmonitors.v1.json",
}

Resource = dict[str, Any]


# -- rendering and validating ------------------------------------------------------------

def kubectl() -> str:
    path = shutil.which("kubectl")
    assert path, "kubectl is not on PATH: it renders the kustomize overlays (kubectl kustomize)"
    return path


@cache
def _rendered(overlay: str) -> str:
    proc = subprocess.run([kubectl(), "kustomize", str(K8S / "overlays" / overlay)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"kubectl kustomize {overlay}: {proc.stderr}"
    return proc.stdout


def render(overlay: str) -> list[Resource]:
    """A fresh copy of the overlay's resources (tests may change theirs)."""
    return [d for d in yaml.safe_load_all(_rendered(overlay)) if d]


def strict(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` wherever an object schema lists its
    properties and neither allows more nor preserves unknown fields: the API server would
    drop such a field silently, and ``kubectl apply`` (strict field validation) refuses it."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {name: strict(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not", "anyOf", "allOf", "oneOf"):
            out[key] = strict(value)
        else:
            out[key] = value
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@cache
def crd_validator(filename: str) -> jsonschema.Draft4Validator:
    # A CRD's schema is OpenAPI 3.0's subset of JSON Schema draft 4.
    schema = strict(json.loads((CRDS / filename).read_text(encoding="utf-8")))
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def problems(resource: Resource) -> list[str]:
    """Why the API server (with the operators' CRDs installed) would refuse ``resource``;
    empty if it would take it. A kind neither knows fails the test."""
    where = f"{resource.get('kind')}/{resource.get('metadata', {}).get('name')}"
    filename = CRD_SCHEMAS.get((resource.get("apiVersion"), resource.get("kind")))
    if filename is not None:
        return [f"{where}: {'.'.join(map(str, e.absolute_path))}: {e.message}"
                for e in crd_validator(filename).iter_errors(resource)]
    try:
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{where}: {'.'.join(map(str, e.path))}: {e.message}"]
    return []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_resource_validates(overlay: str) -> None:
    resources = render(overlay)
    kinds = {r["kind"] for r in resources}
    assert {"Namespace", "ConfigMap", "ServiceAccount", "Deployment", "DaemonSet", "KafkaTopic",
            "PodMonitor"} <= kinds
    found = [p for r in resources for p in problems(r)]
    assert not found, "\n".join(found)


def _one(resources: list[Resource], kind: str, name: str | None = None) -> Resource:
    (found,) = [r for r in resources if r["kind"] == kind
                and (name is None or r["metadata"]["name"] == name)]
    return found


def _set(path: str, value: Any) -> Callable[[Resource], None]:
    """A change that sets the field at dotted ``path`` (list indices as numbers)."""
    def change(r: Resource) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        for p in parents:
            r = r[p]
        r[last] = value
    return change


def _delete(path: str) -> Callable[[Resource], None]:
    def change(r: Resource) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        for p in parents:
            r = r[p]
        del r[last]
    return change


BROKEN = {  # case: (kind, change, what the failure must say)
    "partitions as a string": ("KafkaTopic", _set("spec.partitions", "6"), "'6' is not of type 'integer'"),
    "no partitions at all": ("KafkaTopic", _set("spec.partitions", 0), "less than the minimum of 1"),
    "a misspelt topic field": ("KafkaTopic", _set("spec.partition", 6), "'partition' was unexpected"),
    "a scaler without triggers": ("ScaledObject", _delete("spec.triggers"), "'triggers' is a required"),
    "a trigger without a type": ("ScaledObject", _delete("spec.triggers.0.type"), "'type' is a required"),
    "a secret reference without its key": ("TriggerAuthentication", _delete("spec.secretTargetRef.0.key"),
                                           "'key' is a required"),
    "a metrics port as a number": ("PodMonitor", _set("spec.podMetricsEndpoints.0.port", 9464),
                                   "9464 is not of type 'string'"),
    "a deployment without a selector": ("Deployment", _delete("spec.selector"), "'selector' is a required"),
    "an image as a number": ("Deployment", _set("spec.template.spec.containers.0.image", 5),
                             "5 is not of type 'string'"),
    "a misspelt container field": ("DaemonSet", _set("spec.template.spec.containers.0.volumeMount", []),
                                   "'volumeMount' was unexpected"),
    "a config map value as a number": ("ConfigMap", _set("data.CORESTATE_KAFKA_BOOTSTRAP_SERVERS", 9092),
                                       "9092 is not of type 'string'"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_resource_fails_validation(case: str) -> None:
    """The validation above can fail: each case breaks one rendered resource."""
    kind, change, reason = BROKEN[case]
    resource = _one(render("production"), kind, "corestate.captures" if kind == "KafkaTopic" else None)
    assert problems(resource) == []
    change(resource)
    found = problems(resource)
    assert found, f"{case}: {kind} still validates"
    assert reason in found[0], found


# -- topics ------------------------------------------------------------------------------

def _load_generator() -> Any:
    loader = importlib.util.spec_from_file_location("k8s_generate", K8S / "generate.py")
    assert loader is not None and loader.loader is not None
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return module


def test_checked_in_topics_are_generated_from_the_specs() -> None:
    generate = _load_generator()
    assert generate.OUTPUT.read_text(encoding="utf-8") == generate.render(), \
        "deploy/k8s/base/kafka-topics.yaml is stale: run python deploy/k8s/generate.py"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_topics_follow_the_specs(overlay: str) -> None:
    topics = {r["metadata"]["name"]: r for r in render(overlay) if r["kind"] == "KafkaTopic"}
    assert sorted(topics) == sorted(t.name() for t in TOPICS)
    for t in TOPICS:
        topic = topics[t.name()]
        assert topic["metadata"]["labels"]["strimzi.io/cluster"]
        assert "topicName" not in topic["spec"]  # the resource's name is the topic's
        config = {k: str(v) for k, v in topic["spec"]["config"].items()}
        for key, value in t.topic_config().items():
            assert config[key] == value, f"{t.name()}: {key}"
        assert int(config["min.insync.replicas"]) <= topic["spec"]["replicas"], t.name()
        if not t.scalable:  # integrations read them in order
            assert topic["spec"]["partitions"] == 1, t.name()
    # the committer reads partition p of both: they are partitioned alike
    files, stored = (topics[spec(s).name()]["spec"]["partitions"] for s in ("files", "stored"))
    assert files == stored


# -- pods --------------------------------------------------------------------------------

def pod_specs(resources: list[Resource]) -> Iterator[tuple[str, dict[str, Any]]]:
    for r in resources:
        if r["kind"] in ("Deployment", "DaemonSet"):
            yield r["metadata"]["name"], r["spec"]["template"]["spec"]


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_are_confined(overlay: str) -> None:
    resources = render(overlay)
    pods = dict(pod_specs(resources))
    assert set(pods) == {"corestate-worker", "corestate-agent"}
    for name, pod in pods.items():
        # Service links would add variables named like CORESTATE_KAFKA_BOOTSTRAP_PORT,
        # which the Kafka client settings take in (see test_kafka_settings_...).
        assert pod["enableServiceLinks"] is False, name
        account = _one(resources, "ServiceAccount", pod["serviceAccountName"])
        assert account["automountServiceAccountToken"] is False, name
        for c in _containers(pod):
            assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"], c["name"]
            assert c["resources"]["limits"]["memory"], c["name"]
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, c["name"]
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], c["name"]
            assert not c["securityContext"].get("privileged"), c["name"]
    worker = pods["corestate-worker"]
    assert worker["securityContext"]["runAsNonRoot"] is True
    assert worker["securityContext"]["runAsUser"] != 0
    for c in _containers(worker):
        assert "add" not in c["securityContext"]["capabilities"]
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
    (agent,) = pods["corestate-agent"]["containers"]
    # fanotify marks (CAP_SYS_ADMIN); reading any file, open_by_handle_at (CAP_DAC_READ_SEARCH)
    assert sorted(agent["securityContext"]["capabilities"]["add"]) == ["DAC_READ_SEARCH", "SYS_ADMIN"]


def _environment(resources: list[Resource], container: dict[str, Any]) -> dict[str, str]:
    """The variables the container starts with; a Secret's value is a placeholder."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(_one(resources, "ConfigMap", source["configMapRef"]["name"])["data"])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), ""), var["value"])
        elif "secretKeyRef" in var.get("valueFrom", {}):
            env[var["name"]] = "secret-value"
        elif var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName":
            env[var["name"]] = "node-1"
    return env


def _corestate_args(resources: list[Resource], container: dict[str, Any]) -> list[str] | None:
    if container.get("command") != ["corestate"]:
        return None
    env = _environment(resources, container)
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in container["args"]]


def parse(args: list[str]) -> dict[str, Any]:
    """What the real CLI makes of ``corestate ARGS`` (a usage error raises), without
    running the command."""
    parent = click.Context(cli, info_name="corestate")
    command = cli.get_command(parent, args[0])
    assert command is not None, args[0]
    with command.make_context(args[0], args[1:], parent=parent) as ctx:
        return dict(ctx.params)


def test_parse_refuses_what_the_cli_refuses() -> None:
    with pytest.raises(click.UsageError):
        parse(["agent", "--host-ids", "n1", "/srv"])
    with pytest.raises(click.UsageError):
        parse(["agent", "--host-id", "n1"])  # no paths


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_containers_run_commands_the_cli_accepts(overlay: str) -> None:
    resources = render(overlay)
    commands = {}
    for _, pod in pod_specs(resources):
        for c in _containers(pod):
            args = _corestate_args(resources, c)
            if args is not None:
                commands[args[0]] = parse(args)
    assert set(commands) == {"worker", "agent"}
    assert commands["agent"]["host_id"] == "node-1"  # the node's name, stable across restarts
    assert commands["worker"]["prefix"] == commands["agent"]["prefix"] == DEFAULT_PREFIX


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_agent_mounts_the_paths_it_protects_read_only(overlay: str) -> None:
    resources = render(overlay)
    pod = dict(pod_specs(resources))["corestate-agent"]
    (agent,) = pod["containers"]
    paths = parse(_corestate_args(resources, agent) or [])["paths"]
    assert paths
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    for path in paths:
        assert path in mounts, f"{path} is not mounted"
        assert mounts[path]["readOnly"] is True, path
        assert volumes[mounts[path]["name"]]["hostPath"]["path"] == path, path


def test_every_variable_set_is_one_corestate_reads() -> None:
    source = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "corestate").rglob("*.py"))
    names = set()
    for overlay in OVERLAYS:
        resources = render(overlay)
        for _, pod in pod_specs(resources):
            for c in _containers(pod):
                names |= set(_environment(resources, c))
    names = {n for n in names if n.startswith("CORESTATE_") and not n.startswith("CORESTATE_KAFKA_")}
    assert {"CORESTATE_REPOSITORY", "CORESTATE_PASSWORD_FILE", "CORESTATE_METRICS_LISTEN"} <= names
    unread = sorted(n for n in names if n not in source)
    assert not unread, f"no code reads {unread}"


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA certificate, standing for the one the cluster's Secret holds."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    path = tmp_path_factory.mktemp("ca") / "ca.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _librdkafka_accepts(cfg: dict[str, str]) -> None:
    from confluent_kafka import Producer

    Producer(cfg)  # checks every setting's name and value; connects later, in the background


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kafka_settings_are_ones_librdkafka_accepts(overlay: str, ca_file: Path) -> None:
    resources = render(overlay)
    for _, pod in pod_specs(resources):
        for c in pod["containers"]:
            env = _environment(resources, c)
            cfg = client_config(environ=env)
            if "ssl.ca.location" in cfg:  # a file from a Secret: mounted where it is looked for
                mounted = {m["mountPath"] for m in c["volumeMounts"]}
                assert os.path.dirname(cfg["ssl.ca.location"]) in mounted, c["name"]
                cfg["ssl.ca.location"] = str(ca_file)
            _librdkafka_accepts(cfg)
            # What a Service link would add (enableServiceLinks is off for this reason):
            linked = client_config(environ={**env, "CORESTATE_KAFKA_BOOTSTRAP_PORT": "tcp://10.0.0.1:9092"})
            with pytest.raises(Exception, match="bootstrap.port"):
                _librdkafka_accepts({**cfg, "bootstrap.port": linked["bootstrap.port"]})
    if overlay == "production":
        worker = dict(pod_specs(resources))["corestate-worker"]["containers"][0]
        cfg = client_config(environ=_environment(resources, worker))
        assert cfg["security.protocol"] == "SASL_SSL"
        assert cfg["sasl.password"] == "secret-value"  # from a Secret, not the ConfigMap


def _secret_names(resource: Resource) -> set[str]:
    """The Secrets ``resource`` refers to."""
    found = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("secretKeyRef", "secretRef") and isinstance(value, dict):
                    found.add(value["name"])
                elif key == "secret" and isinstance(value, dict) and "secretName" in value:
                    found.add(value["secretName"])
                elif key == "secretTargetRef":
                    found.update(ref["name"] for ref in value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)
    walk(resource)
    return found


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_come_from_secrets_and_are_documented(overlay: str) -> None:
    resources = render(overlay)
    assert not [r for r in resources if r["kind"] == "Secret"]  # created by the operator
    for r in resources:
        if r["kind"] == "ConfigMap":
            secretive = [k for k in r["data"] if re.search("PASSWORD|SECRET|USERNAME|KEY_ID", k)]
            assert not secretive, secretive
    for _, pod in pod_specs(resources):
        for c in _containers(pod):
            literal = [v["name"] for v in c.get("env", []) if "value" in v
                       and re.search("PASSWORD$|SECRET|USERNAME", v["name"])]
            assert not literal, literal
    docs = (ROOT / "docs" / "distributed.md").read_text(encoding="utf-8")
    section = docs[docs.index("## Running on Kubernetes"):]
    names = set().union(*map(_secret_names, resources))
    assert "corestate-repository" in names
    undocumented = sorted(n for n in names if f"`{n}`" not in section)
    assert not undocumented, f"docs/distributed.md does not say how to create {undocumented}"


# -- scaling -----------------------------------------------------------------------------

def test_production_scales_workers_on_their_consumer_lag() -> None:
    resources = render("production")
    scaler = _one(resources, "ScaledObject")
    worker = _one(resources, "Deployment", scaler["spec"]["scaleTargetRef"]["name"])
    assert "replicas" not in worker["spec"]  # the autoscaler owns it
    topics = {r["metadata"]["name"]: r["spec"] for r in resources if r["kind"] == "KafkaTopic"}
    env = _environment(resources, worker["spec"]["template"]["spec"]["containers"][0])
    triggers = scaler["spec"]["triggers"]
    assert {t["metadata"]["topic"] for t in triggers} == {spec("captures").name(), spec("chunks").name()}
    for t in triggers:
        m = t["metadata"]
        assert t["type"] == "kafka"
        # the faust app id of every worker (corestate/connectors/kafka_runner.py)
        assert m["consumerGroup"] == f"{DEFAULT_PREFIX}.worker"
        assert m["bootstrapServersFromEnv"] in env
        assert int(m["lagThreshold"]) > 0
        assert m["offsetResetPolicy"] == "earliest"  # as the workers' consumers
        assert m["sasl"] == "scram_sha512" and env["CORESTATE_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
        _one(resources, "TriggerAuthentication", t["authenticationRef"]["name"])
        # more workers than partitions would sit idle
        assert scaler["spec"]["maxReplicaCount"] <= topics[m["topic"]]["partitions"]
    assert 1 <= scaler["spec"]["minReplicaCount"] <= scaler["spec"]["maxReplicaCount"]


def test_dev_runs_one_worker_without_autoscaling() -> None:
    resources = render("dev")
    assert not [r for r in resources if r["apiVersion"].startswith("keda.sh/")]
    assert _one(resources, "Deployment", "corestate-worker")["spec"]["replicas"] == 1
