"""The chart's optional governance-report CronJob (`report.enabled`), rendered by the real Helm
library, linted strictly and validated with kubernetes-validate like every other manifest."""
from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest

from tests.support.chart import (
    CHART,
    CONFIG_PATH,
    RELEASE,
    find,
    gateway_config,
    kinds,
    pod_spec,
    render,
)
from tests.unit.test_chart import validation_problems

ON = {"report": {"enabled": True}}


def job_pod(rendered: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return find(rendered, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def test_off_by_default() -> None:
    r = render({})
    assert "CronJob" not in kinds(r)
    assert f"{RELEASE}-report" not in {m["metadata"]["name"] for docs in r.values() for m in docs}


@pytest.mark.parametrize("values", [ON, {"report": {"enabled": True, "schedule": "30 2 * * *", "period": "24h",
                                                    "format": "html"}, "networkPolicy": {"enabled": False},
                                     "secrets": {"existingSecret": ""}, "agents": {"existingSecret": "team-agents"}}],
                         ids=["defaults", "daily-html-minimal"])
def test_enabled_lints_and_validates(values: dict[str, Any]) -> None:
    report = helm.lint(CHART, values, strict=True)
    assert not report["errors"] and not report["messages"], report
    r = render(values)
    docs = r["portcullis/templates/cronjob-report.yaml"]
    assert {d["kind"] for d in docs} == ({"CronJob", "NetworkPolicy"} if values.get("networkPolicy") is None
                                         else {"CronJob"})
    problems = {f"{m['kind']}/{m['metadata']['name']}": p for m in docs if (p := validation_problems(m))}
    assert not problems, problems


def test_runs_the_report_command_like_the_deployment_runs_the_gateway() -> None:
    r = render(ON)
    cron = find(r, "CronJob")
    assert cron["metadata"]["name"] == f"{RELEASE}-report"
    assert cron["spec"]["schedule"] == "0 6 * * 1"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    job, gateway = job_pod(r), pod_spec(r)
    [c] = job["containers"]
    [gw] = gateway["containers"]
    assert c["command"] == ["portcullis"]
    assert c["args"] == ["report", "--direct", "--config", CONFIG_PATH, "--period", "7d", "--format", "md"]
    # The same image, security context, Secret environment and config file as the gateway.
    assert c["image"] == gw["image"] and c["imagePullPolicy"] == gw["imagePullPolicy"]
    assert c["securityContext"] == gw["securityContext"]
    assert job["securityContext"] == gateway["securityContext"]
    assert job["serviceAccountName"] == gateway["serviceAccountName"]
    assert job["automountServiceAccountToken"] is False
    assert c["env"] == gw["env"]
    mount = {m["name"]: m for m in c["volumeMounts"]}
    assert mount["config"] == {"name": "config", "mountPath": CONFIG_PATH, "subPath": "gateway.yaml",
                               "readOnly": True}
    volumes = {v["name"]: v for v in job["volumes"]}
    assert volumes["config"] == {v["name"]: v for v in gateway["volumes"]}["config"]
    assert volumes["agents"] == {v["name"]: v for v in gateway["volumes"]}["agents"]
    assert {m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")} == {"/var/lib/portcullis", "/tmp"}
    assert c["resources"]["limits"] and c["resources"]["requests"]
    assert job["restartPolicy"] == "OnFailure"


def test_values_reach_the_command() -> None:
    r = render({"report": {"enabled": True, "schedule": "0 7 1 * *", "period": "30d", "format": "json"}})
    assert find(r, "CronJob")["spec"]["schedule"] == "0 7 1 * *"
    assert job_pod(r)["containers"][0]["args"][-4:] == ["--period", "30d", "--format", "json"]


def test_report_pods_are_not_gateway_pods() -> None:
    """No Service, PDB or gateway NetworkPolicy selects the report's pods; their own policy lets
    them reach only DNS and PostgreSQL."""
    r = render(ON)
    labels = find(r, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        m = find(r, kind)
        selector = m["spec"]["selector"].get("matchLabels", m["spec"]["selector"])
        assert not selector.items() <= labels.items(), kind
    gateway_np = find(r, "NetworkPolicy", RELEASE)
    assert not gateway_np["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    np = find(r, "NetworkPolicy", f"{RELEASE}-report")
    assert np["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert np["spec"]["ingress"] == []
    ports = {p["port"] for rule in np["spec"]["egress"] for p in rule.get("ports", [])}
    assert ports == {53, 5432}


@pytest.mark.parametrize("bad", [{"format": "pdf"}, {"period": "a week"}, {"schedule": ""}, {"enabled": "yes"},
                                 {"retries": 3}])
def test_schema_rejects_bad_report_values(bad: dict[str, Any]) -> None:
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(ON)
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema({"report": {"enabled": True, **bad}})


def test_the_fleet_config_keeps_lifecycle_state_in_postgres() -> None:
    """The chart's gateway config: lifecycle state in the fleet's PostgreSQL (what the report
    reads), revocations over Redis, and a sqlite path on the writable volume if switched back."""
    cfg = gateway_config(render({}))["lifecycle"]
    assert cfg == {"store": "postgres", "dsn_env": "PORTCULLIS_PG_DSN", "bus": "redis",
                   "redis_url_env": "PORTCULLIS_REDIS_URL", "path": "/var/lib/portcullis/lifecycle.db"}
    # A DSN only by variable name, never in values.
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError):
        chart.validate_schema({"config": {"lifecycle": {"dsn": "postgresql://u:pw@pg/portcullis"}}})
