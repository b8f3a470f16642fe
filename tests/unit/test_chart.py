"""The Helm chart, rendered by the real Helm v4 library (helm-python-sdk) and validated offline.

Each value combination is rendered, linted strictly, and every manifest validated with
kubernetes-validate in strict mode against the oldest Kubernetes the chart supports and the
newest one the package knows; a kind without a built-in schema fails unless it is one of
the CRDs below, which get the structural check documented in the chart README.
"""
from __future__ import annotations

import filecmp
import json
import re
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate as kv
import pytest
import yaml

from gateway.settings import Settings, check
from tests.support.chart import (AGENTS_DIR, AGENTS_PATH, CHART, CONFIG_PATH, DATA_DIR, ENTRYPOINT,
                                 POLICIES_DIR, RELEASE, REPO, container, find, fleet_values, gateway_argv,
                                 gateway_config, gateway_env, kinds, manifests, mounts, notes, pod_spec,
                                 render, write_local_config)

KUBE_VERSIONS = ("1.30.0", "1.37.0")  # Chart.yaml's kubeVersion floor, and the newest schema known
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule"),
             ("gateway.networking.k8s.io/v1", "HTTPRoute")}

GIT = {"enabled": True, "repo": "git@github.com:example/policies.git", "ref": "main", "period": 20,
       "subPath": "rego", "auth": {"method": "ssh", "existingSecret": "policies-deploy-key"}}
COMBOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "opa": {"opa": {"enabled": True}},
    "opa-off": {"opa": {"enabled": False}},
    # Shadow mode: the candidate set is another directory of the synced repository.
    "git-sync-ssh": {"gitSync": GIT, "config": {"policy": {"shadow": {"dir": "/policies/current/rego-candidate",
                                                                       "sample": 0.25}}}},
    "git-sync-token-opa": {"gitSync": {**GIT, "subPath": "", "repo": "https://github.com/example/policies.git",
                                       "auth": {"method": "token", "existingSecret": "policies-token"}},
                           "opa": {"enabled": True}},
    "policies-existing-configmap": {"policies": {"existingConfigMap": "team-policies", "items": [
        {"key": "decision.rego", "path": "portcullis/decision.rego"}]}},
    "ingress-httproute": {"ingress": {"enabled": True, "className": "nginx",
                                      "tls": [{"hosts": ["gateway.example.com"], "secretName": "gw-tls"}]},
                          "httpRoute": {"enabled": True}},
    "hpa-off": {"autoscaling": {"enabled": False}, "replicaCount": 3},
    "hpa-custom-metric": {"autoscaling": {"customMetric": {"name": "portcullis_requests_per_second",
                                                           "averageValue": "200"}}},
    # The admin API and console: tokens in the config, the session secret from the Secret.
    "admin-console": {"config": {"admin": {"console_secret_env": "PORTCULLIS_CONSOLE_SECRET", "tokens": [
        {"name": "ops", "sha256": "0" * 64, "scopes": ["read", "write"]}]}},
        "secrets": {"existingSecret": "portcullis-secrets", "env": [
            {"name": "PORTCULLIS_REDIS_URL", "key": "redis-url"}, {"name": "PORTCULLIS_PG_DSN", "key": "pg-dsn"},
            {"name": "OPENAI_API_KEY", "key": "openai-api-key", "optional": True},
            {"name": "ANTHROPIC_API_KEY", "key": "anthropic-api-key", "optional": True},
            {"name": "PORTCULLIS_CONSOLE_SECRET", "key": "console-secret"}]}},
    "existing-secret": {"secrets": {"existingSecret": "team-llm-keys", "env": [
        {"name": "PORTCULLIS_REDIS_URL", "key": "url"}, {"name": "PORTCULLIS_PG_DSN", "key": "dsn"},
        {"name": "OPENAI_API_KEY", "key": "openai", "optional": True},
        {"name": "ANTHROPIC_API_KEY", "key": "anthropic", "optional": True}]},
        "agents": {"existingSecret": "team-agents"}},
    "monitoring": {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
                   "prometheusRule": {"enabled": True}},
    "minimal": {"autoscaling": {"enabled": False}, "podDisruptionBudget": {"enabled": False},
                "networkPolicy": {"enabled": False}, "grafanaDashboard": {"enabled": False},
                "serviceAccount": {"create": False}, "topologySpread": {"enabled": False},
                "secrets": {"existingSecret": ""}, "agents": {"existingConfigMap": "agents"}},
}


@pytest.fixture(scope="module")
def rendered() -> dict[str, dict[str, list[dict[str, Any]]]]:
    return {name: render(values) for name, values in COMBOS.items()}


def structural_crd_problems(m: dict[str, Any]) -> list[str]:
    """The minimal check for CRDs kubernetes-validate has no schema for (see the chart README)."""
    problems = []
    meta = m.get("metadata", {})
    if not (isinstance(meta.get("name"), str) and isinstance(meta.get("namespace"), str)):
        problems.append("metadata.name and metadata.namespace must be strings")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.get("labels", {}).items()):
        problems.append("labels must map strings to strings")
    spec = m.get("spec")
    if not isinstance(spec, dict):
        return [*problems, "spec must be a mapping"]
    if m["kind"] == "ServiceMonitor":
        if not spec.get("selector", {}).get("matchLabels"):
            problems.append("spec.selector.matchLabels is empty")
        if not all(isinstance(e.get("port"), str) and e.get("path", "/").startswith("/")
                   for e in spec.get("endpoints", [])) or not spec.get("endpoints"):
            problems.append("spec.endpoints need a named port and an absolute path")
    elif m["kind"] == "PrometheusRule":
        rules = [r for g in spec.get("groups", []) for r in g.get("rules", [])]
        if not rules or not all(isinstance(g.get("name"), str) for g in spec["groups"]):
            problems.append("spec.groups need names and rules")
        for r in rules:
            if not (isinstance(r.get("alert"), str) and isinstance(r.get("expr"), str)):
                problems.append(f"rule {r}: alert and expr must be strings")
            if "for" in r and not re.fullmatch(r"\d+[smh]", r["for"]):
                problems.append(f"rule {r.get('alert')}: bad duration {r['for']!r}")
            if not all(isinstance(v, str) for v in {**r.get("labels", {}), **r.get("annotations", {})}.values()):
                problems.append(f"rule {r.get('alert')}: labels and annotations must be strings")
    elif m["kind"] == "HTTPRoute":
        if not all(isinstance(p.get("name"), str) for p in spec.get("parentRefs", [])) or not spec.get("parentRefs"):
            problems.append("spec.parentRefs need names")
        for rule in spec.get("rules", []):
            for b in rule.get("backendRefs", []):
                if not (isinstance(b.get("name"), str) and isinstance(b.get("port"), int)):
                    problems.append("backendRefs need a name and an integer port")
    return problems


def validation_problems(m: dict[str, Any]) -> list[str]:
    problems = []
    for version in KUBE_VERSIONS:
        try:
            kv.validate(m, version, strict=True)
        except kv.ValidationError as e:
            problems.append(f"{version}: {'.'.join(map(str, e.path))}: {e.message}")
        except kv.SchemaNotFoundError as e:  # kubernetes-validate's warning: a failure unless a known CRD
            if (m["apiVersion"], m["kind"]) not in CRD_KINDS:
                problems.append(e.message)
            else:
                problems += structural_crd_problems(m)
    return problems


@pytest.mark.parametrize("combo", COMBOS)
def test_each_combination_lints_strictly_and_validates(combo: str, rendered) -> None:
    report = helm.lint(CHART, COMBOS[combo], strict=True)
    assert not report["errors"] and not report["messages"], report
    docs = list(manifests(rendered[combo]))
    assert docs
    problems = {f"{m['kind']}/{m['metadata']['name']}": p for m in docs if (p := validation_problems(m))}
    assert not problems, problems


def test_the_validation_catches_a_broken_manifest(rendered) -> None:
    deployment = json.loads(json.dumps(find(rendered["defaults"], "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFs"] = True
    assert validation_problems(deployment)
    rule = json.loads(json.dumps(find(render(COMBOS["monitoring"]), "PrometheusRule")))
    rule["spec"]["groups"][0]["rules"][0]["for"] = "soon"
    assert validation_problems(rule)
    assert validation_problems({**deployment, "apiVersion": "example.com/v1", "kind": "Widget"})


def test_defaults_are_production_shaped(rendered) -> None:
    r = rendered["defaults"]
    cfg = gateway_config(r)
    assert cfg["limits"]["backend"] == "redis" and cfg["limits"]["redis_url_env"] == "PORTCULLIS_REDIS_URL"
    assert cfg["audit"]["backend"] == "postgres" and cfg["audit"]["dsn_env"] == "PORTCULLIS_PG_DSN"
    assert "redis_url" not in cfg["limits"] and "dsn" not in cfg["audit"]
    assert cfg["policy"]["fail"] == "closed" and cfg["policy"]["backend"] == "regorus"
    assert cfg["policy"]["dir"] == POLICIES_DIR
    # Helm drops null values, so "no anonymous agent" is the key's absence (the gateway's default).
    assert cfg["identity"].get("anonymous_agent") is None
    assert Settings.model_validate({**cfg, "base_dir": "/"}).identity.anonymous_agent is None
    assert cfg["identity"]["agents_file"] == AGENTS_PATH
    assert cfg["tools"]["session_store"] == "redis"
    assert cfg["server"]["host"] == "0.0.0.0" and cfg["server"]["port"] == 8080
    assert cfg["audit"]["path"].startswith(DATA_DIR + "/") and cfg["audit"]["spool_path"].startswith(DATA_DIR + "/")

    hpa = find(r, "HorizontalPodAutoscaler")
    assert hpa["spec"]["minReplicas"] == 2
    assert find(r, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert {"NetworkPolicy", "Service", "ServiceAccount"} <= kinds(r)

    spec = pod_spec(r)
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 10001
    assert spec["automountServiceAccountToken"] is False
    assert {c["topologyKey"] for c in spec["topologySpreadConstraints"]} == {"topology.kubernetes.io/zone",
                                                                             "kubernetes.io/hostname"}
    gw = container(r)
    sc = gw["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["runAsNonRoot"] is True
    assert sc["capabilities"]["drop"] == ["ALL"] and sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert sc["allowPrivilegeEscalation"] is False
    assert gw["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert gw["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gw["resources"]["limits"] and gw["resources"]["requests"]
    sleep = gw["lifecycle"]["preStop"]["sleep"]["seconds"]
    # Long enough for the preStop sleep, the drain deadline and the audit flush.
    assert spec["terminationGracePeriodSeconds"] == sleep + cfg["server"]["drain_timeout_s"] + 5
    assert spec["terminationGracePeriodSeconds"] >= cfg["server"]["drain_timeout_s"] + 10
    assert gateway_argv(r) == ENTRYPOINT
    assert gateway_env(r) == {"PORTCULLIS_REDIS_URL": ("portcullis-secrets", "redis-url"),
                              "PORTCULLIS_PG_DSN": ("portcullis-secrets", "pg-dsn"),
                              "OPENAI_API_KEY": ("portcullis-secrets", "openai-api-key"),
                              "ANTHROPIC_API_KEY": ("portcullis-secrets", "anthropic-api-key")}
    assert mounts(r) == {CONFIG_PATH: "config", AGENTS_DIR: "agents", POLICIES_DIR: "policies",
                         DATA_DIR: "data", "/tmp": "tmp"}
    # Only the data and tmp mounts are writable.
    assert {m["mountPath"] for m in gw["volumeMounts"] if not m.get("readOnly")} == {DATA_DIR, "/tmp"}
    assert "opa" not in {c["name"] for c in spec.get("initContainers", [])}


def test_the_rendered_config_is_a_valid_gateway_config(rendered) -> None:
    """What the chart renders is what the gateway's own settings model accepts, for every combination."""
    for combo, r in rendered.items():
        s = Settings.model_validate({**gateway_config(r), "base_dir": "/"})
        assert (s.policy.shadow is not None) == (combo == "git-sync-ssh")
        # The admin listener (and console) only where tokens are given, on the pod's loopback.
        assert (bool(s.admin.tokens), s.admin.host) == (combo == "admin-console", "127.0.0.1")
    admin = Settings.model_validate({**gateway_config(rendered["admin-console"]), "base_dir": "/"}).admin
    assert (admin.console_secret_env, admin.console_secret) == ("PORTCULLIS_CONSOLE_SECRET", None)
    shadow = Settings.model_validate({**gateway_config(rendered["git-sync-ssh"]), "base_dir": "/"}).policy.shadow
    assert (shadow.dir, shadow.sample) == ("/policies/current/rego-candidate", 0.25)


@pytest.mark.parametrize("combo", ["defaults", "opa", "git-sync-token-opa", "existing-secret", "admin-console"])
def test_check_config_accepts_the_rendered_config(combo: str, rendered, tmp_path: Path) -> None:
    """`portcullis check-config` on what the chart renders: backend names, the policy set, the
    agents file, and every *_env variable the Deployment sets from its Secret."""
    r = rendered[combo]
    agents = tmp_path / "agents.yaml"
    agents.write_text(yaml.safe_dump({"workspaces": {}, "agents": [], "keys": []}))  # the chart's default
    path = write_local_config(gateway_config(r), tmp_path, policy_dir=CHART / "policies", agents_file=agents)
    environ = {name: "redis://127.0.0.1:6379/0" if "REDIS" in name else
               "postgresql://127.0.0.1:5432/test" if "PG" in name else
               "c" * 40 if "CONSOLE" in name else "sk-test" for name in gateway_env(r)}
    assert check(path, environ) == []
    missing = dict(environ)
    missing.pop(next(n for n in environ if "PG" in n))
    # A Secret key the pod lacks: both stores that read it say so.
    assert [k for k, _ in check(path, missing)] == ["audit.dsn_env", "lifecycle.dsn_env"]


def test_bundled_policies_equal_policies_rego() -> None:
    """Helm cannot read outside the chart: its policies/ copy must be policies_rego/ byte for byte
    (refresh it with: rm -r charts/portcullis/policies && cp -r policies_rego charts/portcullis/policies)."""
    ours, theirs = CHART / "policies", REPO / "policies_rego"

    def files(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts}

    assert files(ours) == files(theirs)
    assert not filecmp.dircmp(ours, theirs).diff_files


def test_policies_configmap_mounts_each_file_in_its_package_directory(rendered) -> None:
    r = rendered["defaults"]
    cm = find(r, "ConfigMap", f"{RELEASE}-policies")
    volume = next(v for v in pod_spec(r)["volumes"] if v["name"] == "policies")
    items = {i["path"]: i["key"] for i in volume["configMap"]["items"]}
    bundled = {p.relative_to(CHART / "policies").as_posix(): p.read_text()
               for p in (CHART / "policies").rglob("*") if p.is_file()}
    assert set(items) == set(bundled)
    assert {path: cm["data"][key] for path, key in items.items()} == bundled

    existing = rendered["policies-existing-configmap"]
    assert "ConfigMap" not in {m["kind"] for m in existing.get("portcullis/templates/policies-configmap.yaml", [])}
    volume = next(v for v in pod_spec(existing)["volumes"] if v["name"] == "policies")
    assert volume["configMap"] == {"name": "team-policies",
                                   "items": [{"key": "decision.rego", "path": "portcullis/decision.rego"}]}


def test_opa_sidecar_serves_the_policy_volume_on_localhost(rendered) -> None:
    for combo in ("opa", "git-sync-token-opa"):
        r = rendered[combo]
        cfg = gateway_config(r)
        assert cfg["policy"]["backend"] == "opa"
        assert cfg["policy"]["opa"] == {"url": "http://127.0.0.1:8181", "timeout_s": 0.25, "max_connections": 16,
                                        "decision_path": "portcullis/decision"}
        assert cfg["cache"]["l2"]["redis_url_env"] == "PORTCULLIS_REDIS_URL"
        opa = container(r, "opa")
        assert opa["image"].startswith("openpolicyagent/opa:1.")
        assert opa["restartPolicy"] == "Always"  # a native sidecar: it outlives the gateway's drain
        assert opa["args"][:3] == ["run", "--server", "--addr=127.0.0.1:8181"]
        assert "--watch" in opa["args"] and opa["args"][-1] == cfg["policy"]["dir"]
        assert mounts(r, "opa") == {POLICIES_DIR: "policies"}
        assert opa["securityContext"]["readOnlyRootFilesystem"] is True
        assert not any("8181" in str(p) for p in container(r)["ports"])  # not exposed beyond the pod
    assert gateway_config(rendered["opa-off"])["policy"]["backend"] == "regorus"
    assert "l2" not in gateway_config(rendered["opa-off"]).get("cache", {})


def test_git_sync_pulls_into_a_shared_volume(rendered) -> None:
    r = rendered["git-sync-ssh"]
    spec = pod_spec(r)
    assert gateway_config(r)["policy"]["dir"] == "/policies/current/rego"
    assert next(v for v in spec["volumes"] if v["name"] == "policies") == {"name": "policies", "emptyDir": {}}
    assert "ConfigMap" not in {m["kind"] for m in r.get("portcullis/templates/policies-configmap.yaml", [])}
    init, sidecar = container(r, "git-sync-init"), container(r, "git-sync")
    assert [c["name"] for c in spec["initContainers"]] == ["git-sync-init", "git-sync"]
    assert sidecar["restartPolicy"] == "Always" and "restartPolicy" not in init
    for c, one_time in ((init, "true"), (sidecar, "false")):
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert c["image"].startswith("registry.k8s.io/git-sync/git-sync:v4.")
        assert env["GITSYNC_REPO"] == GIT["repo"] and env["GITSYNC_REF"] == "main"
        assert env["GITSYNC_ROOT"] == "/policies" and env["GITSYNC_LINK"] == "current"
        assert env["GITSYNC_PERIOD"] == "20s" and env["GITSYNC_ONE_TIME"] == one_time
        assert env["GITSYNC_SSH_KEY_FILE"] == "/etc/git-secret/ssh"
        assert mounts(r, c["name"])["/policies"] == "policies"
    secret = next(v for v in spec["volumes"] if v["name"] == "git-secret")
    assert secret["secret"]["secretName"] == "policies-deploy-key"
    egress_ports = {p["port"] for rule in find(r, "NetworkPolicy")["spec"]["egress"] for p in rule.get("ports", [])}
    assert 22 in egress_ports

    token = rendered["git-sync-token-opa"]
    env = {e["name"]: e for e in container(token, "git-sync")["env"]}
    assert env["GITSYNC_USERNAME"]["valueFrom"]["secretKeyRef"] == {"name": "policies-token", "key": "username"}
    assert env["GITSYNC_PASSWORD_FILE"]["value"] == "/etc/git-secret/token"
    assert gateway_config(token)["policy"]["dir"] == "/policies/current"
    assert [c["name"] for c in pod_spec(token)["initContainers"]] == ["git-sync-init", "git-sync", "opa"]
    assert 22 not in {p["port"] for rule in find(rendered["defaults"], "NetworkPolicy")["spec"]["egress"]
                      for p in rule.get("ports", [])}


def test_ingress_and_httproute(rendered) -> None:
    r = rendered["ingress-httproute"]
    ing = find(r, "Ingress")
    assert ing["spec"]["ingressClassName"] == "nginx"
    assert ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"] == {"name": RELEASE,
                                                                                 "port": {"name": "http"}}
    route = find(r, "HTTPRoute")
    assert route["spec"]["rules"][0]["backendRefs"] == [{"name": RELEASE, "port": 8080}]
    assert not {"Ingress", "HTTPRoute"} & kinds(rendered["defaults"])
    assert "https://gateway.example.com/v1" in notes(COMBOS["ingress-httproute"])


def test_hpa_off_and_custom_metric(rendered) -> None:
    off = rendered["hpa-off"]
    assert "HorizontalPodAutoscaler" not in kinds(off)
    assert find(off, "Deployment")["spec"]["replicas"] == 3
    assert "replicas" not in find(rendered["defaults"], "Deployment")["spec"]  # the HPA owns the count
    metrics = find(rendered["hpa-custom-metric"], "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert [m["type"] for m in metrics] == ["Resource", "Pods"]
    assert metrics[1]["pods"]["metric"]["name"] == "portcullis_requests_per_second"


def test_existing_secret_and_agents_secret(rendered) -> None:
    r = rendered["existing-secret"]
    assert gateway_env(r) == {"PORTCULLIS_REDIS_URL": ("team-llm-keys", "url"),
                              "PORTCULLIS_PG_DSN": ("team-llm-keys", "dsn"),
                              "OPENAI_API_KEY": ("team-llm-keys", "openai"),
                              "ANTHROPIC_API_KEY": ("team-llm-keys", "anthropic")}
    optional = {e["name"]: e["valueFrom"]["secretKeyRef"]["optional"] for e in container(r)["env"]}
    assert optional == {"PORTCULLIS_REDIS_URL": False, "PORTCULLIS_PG_DSN": False, "OPENAI_API_KEY": True,
                        "ANTHROPIC_API_KEY": True}
    agents = next(v for v in pod_spec(r)["volumes"] if v["name"] == "agents")
    assert agents == {"name": "agents", "secret": {"secretName": "team-agents"}}
    assert "portcullis/templates/agents-configmap.yaml" not in r
    # Nothing secret is ever in plain values: every env var of every container comes from a Secret.
    for combo in rendered.values():
        spec = pod_spec(combo)
        for c in spec["containers"] + spec.get("initContainers", []):
            for e in c.get("env", []):
                assert "valueFrom" in e or not re.search(r"KEY|TOKEN|PASSWORD|DSN|URL$", e["name"]) or \
                    e["name"] in ("GITSYNC_SSH_KEY_FILE", "GITSYNC_PASSWORD_FILE"), e


def test_minimal_values_render_only_the_core(rendered) -> None:
    r = rendered["minimal"]
    assert kinds(r) == {"Deployment", "Service", "ConfigMap"}
    assert "env" not in container(r)
    assert pod_spec(r)["serviceAccountName"] == "default"
    assert "topologySpreadConstraints" not in pod_spec(r)


def test_config_and_agents_changes_roll_the_pods_but_policies_do_not() -> None:
    def checksums(values: dict[str, Any]) -> dict[str, str]:
        ann = find(render(values), "Deployment")["spec"]["template"]["metadata"]["annotations"]
        return {k: v for k, v in ann.items() if k.startswith("checksum/")}

    base = checksums({})
    assert checksums({"config": {"logging": {"level": "DEBUG"}}})["checksum/config"] != base["checksum/config"]
    assert checksums(fleet_values())["checksum/agents"] != base["checksum/agents"]
    assert checksums({"gitSync": GIT}) != base  # policy.dir changed in gateway.yaml
    assert checksums({"policies": {"existingConfigMap": "x"}}) == base  # hot reload, no restart


def test_grafana_dashboard_configmap(rendered) -> None:
    cm = find(rendered["defaults"], "ConfigMap", f"{RELEASE}-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dash = json.loads(cm["data"]["portcullis.json"])
    titles = " | ".join(p["title"] for p in dash["panels"]).lower()
    for needed in ("decision", "surface", "overhead p50 / p99", "cache hit rate", "limiter refusals",
                   "audit queue depth", "policy revision per pod"):
        assert needed in titles


def test_notes_say_how_to_point_the_sdks_at_the_release() -> None:
    text = notes()
    assert f'base_url="http://{RELEASE}.portcullis.svc:8080/v1"' in text  # openai
    assert f'base_url="http://{RELEASE}.portcullis.svc:8080"' in text  # anthropic
    assert f"http://{RELEASE}.portcullis.svc:8080/mcp/<server>" in text
