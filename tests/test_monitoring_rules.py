"""What operators look at: the Prometheus alerting rules and the Grafana dashboard in conf/.

The rules pass ``promtool check rules`` and their unit tests (``promtool test rules``); the
dashboard's queries are PromQL promtool accepts; and every metric either of them names exists in
a scrape of a real ``policy-server serve``, so renaming a metric breaks this test.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from support import Sink, free_port, service_config
from test_delivery import report

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "conf" / "prometheus-alerts.yml"
RULE_TESTS = ROOT / "conf" / "prometheus-alerts.test.yml"
DASHBOARD = ROOT / "conf" / "grafana-dashboard.json"

# (scripts/test-debian13 does not pass it on: the host's run checks the rules)
REQUIRE_PROMTOOL = os.environ.get("POLICY_SERVER_REQUIRE_PROMTOOL") == "1"

METRIC = re.compile(r"\bpolicy_server_[a-z_]+")
# the exposition's sample names of a family: counter_total, histogram_bucket|_sum|_count
SUFFIXES = {"_total": "counter", "_bucket": "histogram", "_sum": "histogram", "_count": "histogram"}
PROMQL_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}

# what the dashboard and the rules must cover (the list)
DASHBOARD_METRICS = {
    "policy_server_requests",
    "policy_server_request_seconds",
    "policy_server_fail_open",
    "policy_server_notices_queued",
    "policy_server_deliveries",
    "policy_server_queue_depth",
    "policy_server_queue_oldest_seconds",
    "policy_server_breaker_open",
    "policy_server_paused",
    "policy_server_ready",
    "policy_server_geo_data_age_seconds",
    "policy_server_delivery_claims_lost",
    "policy_server_worker_restarts",
}
ALERT_METRICS = {
    "policy_server_breaker_open",
    "policy_server_fail_open",
    "policy_server_queue_oldest_seconds",
    "policy_server_queue_depth",
    "policy_server_geo_data_age_seconds",
    "policy_server_ready",
}


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is not None:
        return path
    why = "promtool is not installed (Debian: apt-get install --no-install-recommends prometheus)"
    if REQUIRE_PROMTOOL:
        pytest.fail(f"{why}; POLICY_SERVER_REQUIRE_PROMTOOL=1")
    pytest.skip(why)


def run_promtool(promtool: str, *args: str, cwd: Path) -> str:
    done = subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def query_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that draws data (rows only group them), nested in rows or not."""
    found: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            found += panel.get("panels", [])
        else:
            found.append(panel)
    return found


def dashboard_queries() -> list[str]:
    return [
        target["expr"] for panel in query_panels(load_dashboard()) for target in panel["targets"]
    ]


def alert_names() -> list[str]:
    return re.findall(r"^\s*- alert: (\w+)$", RULES.read_text(encoding="utf-8"), re.MULTILINE)


def family_of(name: str) -> tuple[str, str | None]:
    """The family a sample name belongs to, and the type its suffix implies."""
    for suffix, kind in SUFFIXES.items():
        if name.endswith(suffix):
            return name.removesuffix(suffix), kind
    return name, None


# --- the rules ------------------------------------------------------------------------------


def test_the_rules_pass_promtool_check(promtool: str) -> None:
    output = run_promtool(promtool, "check", "rules", str(RULES), cwd=ROOT)
    assert f"SUCCESS: {len(alert_names())} rules found" in output


def test_the_rules_unit_tests_pass(promtool: str) -> None:
    output = run_promtool(promtool, "test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert "SUCCESS" in output


def test_each_alert_is_tested_firing_and_not_firing() -> None:
    text = RULE_TESTS.read_text(encoding="utf-8")
    firing: set[str] = set()
    quiet: set[str] = set()
    # one alert_rule_test entry per "- eval_time:" (block or flow style)
    for case in re.split(r"\n\s*- \{?eval_time:", text)[1:]:
        case = re.split(r"\n  - interval:", case)[0]  # up to the next test group
        name = re.search(r"alertname: (\w+)", case)
        assert name is not None, case
        (firing if "exp_alerts:" in case else quiet).add(name.group(1))
    names = set(alert_names())
    assert {
        "PolicyServerBreakerOpen",
        "PolicyServerFailOpenRate",
        "PolicyServerNoticeQueuedTooLong",
        "PolicyServerDeadLettersGrowing",
        "PolicyServerGeoDataOld",
        "PolicyServerNotReady",
        "PolicyServerDown",
    } <= names
    assert names - firing == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested quiet"
    assert firing | quiet <= names, "tests of alerts that do not exist"


def test_each_alert_has_a_severity_and_says_what_to_do() -> None:
    text = RULES.read_text(encoding="utf-8")
    rules = re.split(r"\n\s*- alert: ", text)[1:]
    assert len(rules) == len(alert_names())
    for rule in rules:
        name = rule.split("\n", 1)[0]
        assert re.search(r"\n\s*for: \d+[smh]\n", rule), name
        assert re.search(r"\n\s*severity: (critical|warning)\n", rule), name
        assert "summary:" in rule and "description:" in rule, name
    # the commands the annotations name are real ones
    help_text = subprocess.run(
        [sys.executable, "-m", "policy_server", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    commands = set(re.findall(r"`policy-server ([a-z-]+)", text))
    assert {"breaker", "outbox", "resume", "lookup"} <= commands
    for command in commands:
        assert re.search(rf"^\s+{command}\s", help_text, re.MULTILINE), command


# --- the dashboard --------------------------------------------------------------------------


def test_the_dashboard_is_valid_and_each_panel_has_a_target() -> None:
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 39
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"

    panels = query_panels(dashboard)
    assert len(panels) >= 12
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["refId"], panel["title"]

    # every data source is the variable: nothing bound to one Grafana's uid
    def walk(node: Any) -> Iterator[dict[str, Any]]:
        if isinstance(node, dict):
            if "datasource" in node:
                yield node["datasource"]
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)

    sources = list(walk({key: dashboard[key] for key in ("panels", "templating")}))
    assert sources
    for source in sources:
        assert source == {"type": "prometheus", "uid": "${datasource}"}

    # panels do not overlap on the 24-column grid
    boxes = [(p["gridPos"], p["title"]) for p in dashboard["panels"]]
    for i, (a, title_a) in enumerate(boxes):
        assert a["x"] >= 0 and a["x"] + a["w"] <= 24, title_a
        for b, title_b in boxes[i + 1 :]:
            apart = (
                a["x"] + a["w"] <= b["x"]
                or b["x"] + b["w"] <= a["x"]
                or a["y"] + a["h"] <= b["y"]
                or b["y"] + b["h"] <= a["y"]
            )
            assert apart, (title_a, title_b)


def test_the_dashboard_queries_are_promql(promtool: str, tmp_path: Path) -> None:
    """promtool parses each query, as the expression of a recording rule."""
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for number, expr in enumerate(dashboard_queries()):
        for variable, value in PROMQL_VARIABLES.items():
            expr = expr.replace(variable, value)
        expr = re.sub(r"\$(\w+)", ".*", expr)  # $job, $instance: =~ regexes
        assert "$" not in expr, expr
        lines += [f"      - record: dashboard:query_{number}", f"        expr: {json.dumps(expr)}"]
    rules = tmp_path / "dashboard-queries.yml"
    rules.write_text("\n".join(lines) + "\n", encoding="utf-8")
    output = run_promtool(promtool, "check", "rules", str(rules), cwd=tmp_path)
    assert f"SUCCESS: {len(dashboard_queries())} rules found" in output


def test_the_dashboard_and_the_rules_cover_what_operators_watch() -> None:
    in_dashboard = {family_of(n)[0] for e in dashboard_queries() for n in METRIC.findall(e)}
    assert in_dashboard >= DASHBOARD_METRICS, DASHBOARD_METRICS - in_dashboard
    in_rules = {family_of(n)[0] for n in METRIC.findall(RULES.read_text(encoding="utf-8"))}
    assert in_rules >= ALERT_METRICS, ALERT_METRICS - in_rules


# --- every metric named exists --------------------------------------------------------------


async def scrape(session: aiohttp.ClientSession, url: str) -> dict[str, Metric]:
    async with session.get(url) as resp:
        assert resp.status == 200
        text = await resp.text()
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(family: Metric | None) -> set[str]:
    return set() if family is None else {sample.name for sample in family.samples}


@pytest.mark.slow
async def test_every_metric_used_exists_in_a_scrape_of_the_service(
    tmp_path: Path, geo_files: dict[str, Path], sink: Sink
) -> None:
    port, metrics_port = free_port(), free_port()
    config = service_config(
        tmp_path / "policy.toml",
        port=port,
        geo=geo_files,
        storage={"path": tmp_path / "store.sqlite3"},
        sink_url=sink.url,
        metrics={"enabled": True, "listen": f"127.0.0.1:{metrics_port}"},
    )
    log_path = tmp_path / "service.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "policy_server", "serve", "-c", str(config)],
            stdout=log,
            stderr=log,
        )
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        async with aiohttp.ClientSession() as session:
            # traffic, so that the labelled families have samples too
            allow = json.dumps({"login": "alice", "remote": "203.0.113.7", "protocol": "imap"})
            for _ in range(200):  # bounded: about 20 s for the service to start
                assert proc.poll() is None, log_path.read_text()
                try:
                    async with session.post(f"http://127.0.0.1:{port}/?command=allow", data=allow):
                        break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("the service did not answer: " + log_path.read_text())
            async with session.post(f"http://127.0.0.1:{port}/?command=report", data=report()) as r:
                assert r.status == 200
            await sink.wait_for(1)

            families: dict[str, Metric] = {}
            for _ in range(100):  # the delivery's outcome is counted just after the webhook answers
                families = await scrape(session, metrics_url)
                if "policy_server_deliveries_total" in samples(
                    families.get("policy_server_deliveries")
                ):
                    break
                await asyncio.sleep(0.1)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    ready = families["policy_server_ready"].samples
    assert [s.value for s in ready] == [1.0], log_path.read_text()
    assert "policy_server_geo_data_age_seconds" in samples(
        families.get("policy_server_geo_data_age_seconds")
    )

    used = {
        f"{RULES.name}": set(METRIC.findall(RULES.read_text(encoding="utf-8"))),
        f"{RULE_TESTS.name}": set(METRIC.findall(RULE_TESTS.read_text(encoding="utf-8"))),
        f"{DASHBOARD.name}": {
            name for expr in dashboard_queries() for name in METRIC.findall(expr)
        },
    }
    assert len(used[DASHBOARD.name]) >= len(DASHBOARD_METRICS)
    for source, names in used.items():
        for name in sorted(names):
            family_name, kind = family_of(name)
            family = families.get(family_name)
            if family is None:  # a gauge can end in _count or _sum without being a histogram
                family, kind = families.get(name), None
            assert family is not None, f"{source} uses {name}, which the service does not export"
            if kind is not None:
                assert family.type == kind, f"{source}: {name} but {family_name} is {family.type}"
            elif family.type in ("counter", "histogram"):
                raise AssertionError(f"{source}: {name} is a {family.type}: use its samples")
