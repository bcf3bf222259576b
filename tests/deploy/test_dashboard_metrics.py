"""The Grafana dashboard and the Prometheus alert rules name only metrics that
moend's C++ code exports (see exported_metrics.py), and the dashboard is well
formed. Run: python3 tests/deploy/test_dashboard_metrics.py [-v]
"""
import glob
import json
import os
import sys
import unittest

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import exported_metrics as em  # noqa: E402

ROOT = os.environ.get("MOEND_SOURCE_DIR") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
DASHBOARDS = sorted(glob.glob(os.path.join(ROOT, "deploy", "grafana", "dashboards", "*.json")))
RULE_FILES = sorted(glob.glob(os.path.join(ROOT, "deploy", "prometheus", "rules", "*.yml")))
DATASOURCES = os.path.join(ROOT, "deploy", "grafana", "provisioning", "datasources",
                           "prometheus.yml")


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f) if path.endswith(".json") else yaml.safe_load(f)


def panel_list(dashboard):
    """Every panel, rows' nested panels included."""
    out = []
    for p in dashboard.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def dashboard_queries(dashboard):
    """(where, expr) for every PromQL query of the dashboard."""
    out = []
    for p in panel_list(dashboard):
        for t in p.get("targets", []):
            out.append((f'panel "{p.get("title")}" target {t.get("refId")}', t.get("expr", "")))
    for v in dashboard.get("templating", {}).get("list", []):
        q = v.get("query")
        if v.get("type") == "query":
            expr = q.get("query") if isinstance(q, dict) else q
            # label_values(metric{...}, label) -> metric{...}
            if expr.startswith("label_values("):
                expr = expr[len("label_values("):].rsplit(",", 1)[0]
            out.append((f'variable "{v.get("name")}"', expr))
    return out


def rule_queries():
    out = []
    for path in RULE_FILES:
        for g in load(path)["groups"]:
            for r in g["rules"]:
                name = r.get("alert") or r.get("record")
                out.append((f"{os.path.basename(path)} rule {name}", r["expr"]))
    return out


def unknown_metrics(queries, allowed):
    problems = []
    for where, expr in queries:
        names = em.promql_metric_names(expr)
        if not names:
            problems.append(f"{where}: no metric found in {expr!r}")
        for n in sorted(names - allowed):
            problems.append(f"{where}: metric {n} is not exported by the code (expr: {expr})")
    return problems


class DashboardMetricsTest(unittest.TestCase):
    def setUp(self):
        self.allowed, self.pending, self.declared = em.allowed_names(ROOT)
        self.assertTrue(self.declared, "found no .Name(\"moend_...\") in the C++ sources")

    def test_sources_declare_the_core_metrics(self):
        # The grep itself works: these are declared today by router and registry.
        for n in ("moend_router_solve_seconds", "moend_registry_jobs",
                  "moend_registry_reports_total", "moend_router_watch_streams"):
            self.assertIn(n, self.declared)
        self.assertEqual(self.declared["moend_router_solve_seconds"], "histogram")

    def test_dashboards_exist(self):
        self.assertTrue(DASHBOARDS, "no dashboard in deploy/grafana/dashboards")

    def test_dashboard_queries_name_only_exported_metrics(self):
        for path in DASHBOARDS:
            d = load(path)
            queries = dashboard_queries(d)
            self.assertGreater(len(queries), 10, path)
            problems = unknown_metrics(queries, self.allowed)
            self.assertEqual(problems, [], "\n".join(problems))
        if self.pending:
            print(f"note: moend_node_* metrics not exported by any source yet; the "
                  f"dashboard's node panels use the specified names "
                  f"{sorted(em.PENDING_NODE_METRICS)}", file=sys.stderr)

    def test_alert_rules_name_only_exported_metrics(self):
        queries = rule_queries()
        self.assertTrue(queries)
        problems = unknown_metrics(queries, self.allowed)
        self.assertEqual(problems, [], "\n".join(problems))

    def test_dashboard_covers_the_issue_panels(self):
        d = load(os.path.join(ROOT, "deploy/grafana/dashboards/moend.json"))
        used = set()
        for _, expr in dashboard_queries(d):
            used |= em.promql_metric_names(expr)
        for n in ("moend_node_kv_cache_bytes", "moend_node_kv_cache_uncompressed_bytes",
                  "moend_node_compression_ratio", "moend_node_plan_predicted_error",
                  "moend_registry_jobs", "moend_registry_reports_total",
                  "moend_router_solve_seconds_bucket", "moend_router_watch_streams"):
            self.assertIn(n, used, f"the dashboard shows no panel over {n}")
        exprs = " ".join(e for _, e in dashboard_queries(d))
        self.assertIn("histogram_quantile(0.99", exprs)

    def test_dashboard_structure(self):
        ds_uid = load(DATASOURCES)["datasources"][0]["uid"]
        for path in DASHBOARDS:
            d = load(path)
            for key in ("title", "uid", "panels", "schemaVersion"):
                self.assertIn(key, d, f"{path}: missing {key}")
            variables = {v["name"]: v for v in d.get("templating", {}).get("list", [])}
            ids = [p["id"] for p in panel_list(d)]
            self.assertEqual(len(ids), len(set(ids)), f"{path}: duplicate panel ids")
            cells = set()
            for p in panel_list(d):
                g = p["gridPos"]
                self.assertLessEqual(g["x"] + g["w"], 24, f'panel "{p["title"]}" is wider than the grid')
                for dx in range(g["w"]):
                    for dy in range(g["h"]):
                        cell = (g["x"] + dx, g["y"] + dy)
                        self.assertNotIn(cell, cells, f'panel "{p["title"]}" overlaps another')
                        cells.add(cell)
                if p["type"] == "row":
                    continue
                self.assertTrue(p.get("targets"), f'panel "{p["title"]}" has no query')
                uid = p["datasource"]["uid"]
                if uid.startswith("${"):
                    self.assertIn(uid[2:-1], variables, f'panel "{p["title"]}": unknown variable {uid}')
                else:
                    self.assertEqual(uid, ds_uid, f'panel "{p["title"]}": unknown data source')
                for t in p["targets"]:
                    self.assertEqual(t["datasource"]["uid"], p["datasource"]["uid"])
                    for var in ("$node_job", "$node_instance"):
                        if var in t["expr"]:
                            self.assertIn(var[1:], variables)
            if "datasource" in variables:
                self.assertEqual(variables["datasource"]["current"]["value"], ds_uid,
                                 "the $datasource variable must default to the provisioned uid")


class ExtractorSelfTest(unittest.TestCase):
    """The checks above would catch a wrong name."""

    def setUp(self):
        self.allowed, _, _ = em.allowed_names(ROOT)

    def test_helper_declared_metrics_are_found(self):
        # `gauge("moend_x", help)` where gauge() wraps BuildGauge().Name(name).
        import tempfile
        with tempfile.TemporaryDirectory() as root:
            os.makedirs(os.path.join(root, "clients", "node"))
            with open(os.path.join(root, "clients", "node", "n.cc"), "w") as f:
                f.write('auto gauge = [&](const char* name, const char* help) {\n'
                        '  return &prometheus::BuildGauge().Name(name).Help(help);\n};\n'
                        'a_ = gauge("moend_node_a_bytes", "A");\n'
                        'h_ = prometheus::BuildHistogram()\n  .Name("moend_node_b_seconds");\n')
            d = em.declared_metrics(root)
        self.assertEqual(d, {"moend_node_a_bytes": "gauge", "moend_node_b_seconds": "histogram"})

    def test_misspelt_metric_is_reported(self):
        bad = [("x", 'sum(rate(moend_router_solve_second_bucket{job="a"}[5m]))')]
        self.assertEqual(len(unknown_metrics(bad, self.allowed)), 1)

    def test_histogram_base_name_is_not_a_series(self):
        bad = [("x", "rate(moend_router_solve_seconds[5m])")]
        self.assertEqual(len(unknown_metrics(bad, self.allowed)), 1)

    def test_functions_labels_and_variables_are_not_metrics(self):
        ok = [("x", 'histogram_quantile(0.99, sum by (solver, le) '
                    '(rate(moend_router_solve_seconds_bucket{instance=~"$node_instance", '
                    'le!="rate"}[$__rate_interval]))) > bool 0.05 offset 1h')]
        self.assertEqual(unknown_metrics(ok, self.allowed), [])

    def test_pending_node_metrics_lapse_once_the_node_exports_any(self):
        # A node that exports only some of the specified metrics: the
        # dashboard's panels over the others must then fail.
        declared = {n: k for n, k in em.declared_metrics(ROOT).items()
                    if not n.startswith("moend_node_")}
        declared["moend_node_kv_cache_bytes"] = "gauge"
        allowed, pending, _ = em.allowed_names(ROOT, declared)
        self.assertEqual(pending, set())
        self.assertNotIn("moend_node_compression_ratio", allowed)
        problems = unknown_metrics(dashboard_queries(load(DASHBOARDS[0])), allowed)
        self.assertTrue(any("moend_node_compression_ratio" in p for p in problems), problems)


if __name__ == "__main__":
    unittest.main()
