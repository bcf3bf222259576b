"""Metric names that moend's C++ code exports, and the metric names a PromQL
expression uses.

Exported names come from the sources, not from a list kept by hand: every
`prometheus::Build<Type>().Name("moend_...")` in the C++ files of the tree
(build folders excluded), and every `helper("moend_...", ...)` call in a file
whose helper builds with `Build<Type>().Name(variable)` (a local lambda such as
`gauge(name, help)`), typed by that builder. prometheus-cpp exposes a counter or gauge under its
name as given (it appends no `_total`), a histogram as `<name>_bucket`,
`<name>_sum` and `<name>_count`, a summary as `<name>`, `<name>_sum`,
`<name>_count`.
"""
import os
import re

SOURCE_DIRS = ("services", "worker", "clients", "core", "runtime", "storage", "kernels")
CXX_SUFFIXES = (".cc", ".h", ".cu", ".cuh", ".cpp", ".hpp")

# Metrics of the inference node (moend-node) as specified in issue 6, allowed
# in dashboards and rules only while no source exports any moend_node_ metric.
# Once the node exists, each of these must really be exported.
PENDING_NODE_METRICS = {
    "moend_node_kv_cache_bytes": "gauge",
    "moend_node_kv_cache_uncompressed_bytes": "gauge",
    "moend_node_compression_ratio": "gauge",
    "moend_node_plan_version": "gauge",
    "moend_node_plan_predicted_error": "gauge",
    "moend_node_tokens_generated_total": "counter",
    # Added by the node's author: the active plan's own ratio (Plan.ratio).
    "moend_node_plan_ratio": "gauge",
}

# Series Prometheus itself attaches to every scrape target.
PROMETHEUS_BUILTIN = {"up", "scrape_duration_seconds", "scrape_samples_scraped",
                      "scrape_samples_post_metric_relabeling", "scrape_series_added"}

_DECL = re.compile(r'Build(Counter|Gauge|Histogram|Summary|Info)\s*\(\s*\)\s*'
                   r'\.\s*Name\s*\(\s*"(moend_[A-Za-z0-9_]+)"')
_ANY_NAME = re.compile(r'\.\s*Name\s*\(\s*"(moend_[A-Za-z0-9_]+)"')
_DECL_BY_VARIABLE = re.compile(r'Build(Counter|Gauge|Histogram|Summary|Info)\s*\(\s*\)\s*'
                               r'\.\s*Name\s*\(\s*[A-Za-z_][A-Za-z0-9_]*\s*\)')
_HELPER_CALL = re.compile(r'\b[A-Za-z_][A-Za-z0-9_]*\s*\(\s*"(moend_[A-Za-z0-9_]+)"\s*,')


def declared_metrics(root):
    """{base name: type} of every metric declared in the C++ sources."""
    out = {}
    untyped = set()
    for d in SOURCE_DIRS:
        top = os.path.join(root, d)
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = [x for x in dirnames if not x.startswith("build")]
            for f in filenames:
                if not f.endswith(CXX_SUFFIXES):
                    continue
                with open(os.path.join(dirpath, f), encoding="utf-8", errors="replace") as fh:
                    text = fh.read()
                typed = {m.group(2): m.group(1).lower() for m in _DECL.finditer(text)}
                helper_types = {m.group(1).lower() for m in _DECL_BY_VARIABLE.finditer(text)}
                if helper_types:
                    kind = helper_types.pop() if len(helper_types) == 1 else "untyped"
                    for n in _HELPER_CALL.findall(text):
                        typed.setdefault(n, kind)
                out.update(typed)
                untyped.update(n for n in _ANY_NAME.findall(text) if n not in typed)
    # A .Name("moend_x") whose builder we could not see: accept it as a plain
    # series name rather than miss it.
    for n in untyped - set(out):
        out[n] = "untyped"
    return out


def series_names(declared):
    """Every series name the declared metrics expose."""
    names = set()
    for name, kind in declared.items():
        if kind == "histogram":
            names.update({name + "_bucket", name + "_sum", name + "_count"})
        elif kind == "summary":
            names.update({name, name + "_sum", name + "_count"})
        else:
            names.add(name)
    return names


def allowed_names(root, declared=None):
    """(allowed series names, pending node series allowed for now, declared
    metrics). `declared` overrides the scan of the sources (for tests)."""
    if declared is None:
        declared = declared_metrics(root)
    names = series_names(declared) | PROMETHEUS_BUILTIN
    node_exported = any(n.startswith("moend_node_") for n in declared)
    pending = set()
    if not node_exported:
        pending = series_names(PENDING_NODE_METRICS)
        names |= pending
    return names, pending, declared


# --- PromQL -----------------------------------------------------------------

_KEYWORDS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "by", "without", "on", "ignoring", "group_left",
    "group_right", "bool", "and", "or", "unless", "offset", "atan2", "inf", "nan", "start",
    "end",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GRAFANA_VAR = re.compile(r'\$\{[^}]*\}|\$__\w+|\$\w+|\[\[\w+\]\]')
_LABELS = re.compile(r'\{[^{}]*\}')
_RANGE = re.compile(r'\[[^\]]*\]')
_GROUPING = re.compile(r'\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)')
_IDENT = re.compile(r'(?<![A-Za-z0-9_:.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?')
_NUMBER_UNIT = re.compile(r'\b\d+(\.\d+)?(ms|s|m|h|d|w|y)\b')


def promql_metric_names(expr):
    """Metric names used in a PromQL expression (functions, keywords, label
    names and Grafana variables removed). Also returns names selected with
    {__name__="..."}."""
    names = set(re.findall(r'__name__\s*=\s*"([^"]+)"', expr))
    e = _GRAFANA_VAR.sub("5m", expr)
    e = _STRING.sub('""', e)
    e = _LABELS.sub(" ", e)
    e = _RANGE.sub(" ", e)
    e = _GROUPING.sub(" ", e)
    e = _NUMBER_UNIT.sub(" ", e)
    e = re.sub(r'\b\d+(\.\d+)?([eE][-+]?\d+)?\b', " ", e)
    for m in _IDENT.finditer(e):
        ident, call = m.group(1), m.group(2)
        if call:  # a function call: rate(, histogram_quantile(, sum(
            continue
        if ident.lower() in _KEYWORDS:
            continue
        names.add(ident)
    return names
