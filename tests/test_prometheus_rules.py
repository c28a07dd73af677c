"""The Prometheus alert rules of docs/operations.md load, and do not fire on a blip.

``promtool`` (Debian's ``prometheus`` package, installed when missing) checks
the rules as written in the doc, then replays series through them: a WMS
outage of two minutes does not fire ``WhSinkNotDelivering``, one of ten
minutes does; one restart does not fire ``WhGatewayRestarting``, a loop does.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from debian import debian_tool

DOC = Path(__file__).resolve().parents[1] / "docs" / "operations.md"
LABELS = 'instance="gw:8080",job="warehouse-gateway"'
#: One restart at 5 min, then a restart loop from 20 min on.
STARTS = " ".join(["100"] * 5 + ["400"] * 15 + ["1300", "1360", "1420", "1480", "1540"])
WMS = 'severity: critical, instance: "gw:8080", job: warehouse-gateway, sink: wms'

UNIT_TESTS = f"""
rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'wh_sink_up{{{LABELS},sink="wms"}}'
        values: '1 1 0 0 1 1 1 1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0'
      - series: 'wh_sink_backlog_events{{{LABELS},sink="wms"}}'
        values: '0 0 50 90 0 0 0 0 0 0 0 0 40 80 120 160 200 240 280 320 360 400 440 480 520'
      - series: 'wh_process_start_time_seconds{{{LABELS}}}'
        values: '{STARTS}'
      - series: 'wh_alerts{{{LABELS},kind="conveyor_jam",severity="critical"}}'
        values: '0 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0'
    alert_rule_test:
      - eval_time: 5m
        alertname: WhSinkNotDelivering
        exp_alerts: []
      - eval_time: 20m
        alertname: WhSinkNotDelivering
        exp_alerts:
          - exp_labels: {{{WMS}}}
            exp_annotations:
              summary: "sink wms has not delivered for 5 min (see the alert on the status page)"
      - eval_time: 10m
        alertname: WhGatewayRestarting
        exp_alerts: []
      - eval_time: 24m
        alertname: WhGatewayRestarting
        exp_alerts:
          - exp_labels: {{severity: warning, instance: "gw:8080", job: warehouse-gateway}}
            exp_annotations:
              summary: "gateway gw:8080 restarted 6 times in 30 min"
      - eval_time: 4m
        alertname: WhConveyorJam
        exp_alerts: []
"""


def rules_from_doc() -> str:
    text = DOC.read_text("utf-8")
    m = re.search(r"<!-- prometheus-rules -->\n```yaml\n(.*?)```", text, re.S)
    assert m is not None, "no rules block after <!-- prometheus-rules --> in operations.md"
    return m.group(1)


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    tool = debian_tool(Path("/usr/bin/promtool"), "prometheus")
    return subprocess.run([str(tool), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, check=False)


def test_rules_in_the_doc_load_and_do_not_fire_on_a_blip(tmp_path: Path) -> None:
    rules = rules_from_doc()
    (tmp_path / "rules.yml").write_text(rules, encoding="utf-8")
    (tmp_path / "tests.yml").write_text(UNIT_TESTS, encoding="utf-8")
    check = promtool("check", "rules", "rules.yml", cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    n = len(re.findall(r"^\s*- alert: ", rules, re.M))
    assert f"SUCCESS: {n} rules found" in check.stdout, check.stdout
    test = promtool("test", "rules", "tests.yml", cwd=tmp_path)
    assert test.returncode == 0, test.stdout + test.stderr
