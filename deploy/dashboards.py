"""seer's Grafana dashboards and Kubernetes alert rules, generated from one place.

Why generated: three dashboards of ~30 panels are long JSON that nobody reviews by hand, and the
same dashboards and alert rules must also reach Kubernetes (ConfigMaps for Grafana's sidecar, a
PrometheusRule for the Prometheus operator), where kustomize cannot read files outside `k8s/`.
So this script is the source: it writes

- `deploy/grafana/<uid>.json`           the dashboards (import them, or let the sidecar load them);
- `k8s/base/dashboards/<uid>.json`      byte-identical copies, packed into ConfigMaps by kustomize;
- `k8s/base/prometheusrule.yaml`        `deploy/alerts/seer-rules.yml` wrapped in a PrometheusRule.

Run `python deploy/dashboards.py` after editing a panel or a rule; `--check` (what the tests do)
fails when a committed file differs from what this script writes.

Metric names are the exported ones: seer's Ray metrics carry Ray's `ray_` prefix
(`ray_seer_train_*`, `ray_seer_ingest_*`), the evaluator's gauges are served by the evaluator
itself (`seer_eval_*`, no prefix), and Ray's own series keep their names (`ray_data_*`,
`ray_train_*`, `ray_object_store_*`). `core` marks the panels that a short local run (training,
ingest with a few corrupt images, one evaluator) must fill with data; the integration test
checks exactly that.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
GRAFANA_DIR = ROOT / "deploy" / "grafana"
K8S_DASHBOARDS_DIR = ROOT / "k8s" / "base" / "dashboards"
RULES_FILE = ROOT / "deploy" / "alerts" / "seer-rules.yml"
K8S_RULE_FILE = ROOT / "k8s" / "base" / "prometheusrule.yaml"

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"


#: One query of a panel: (PromQL, legend); an empty legend is Grafana's automatic one.
Target = tuple[str, str]


def rate(metric: str) -> str:
    return f"rate({metric}[{RATE}])"


def quantile(q: float, histogram: str) -> str:
    """The q-quantile over every series of a histogram (its `_bucket` series)."""
    return f"histogram_quantile({q}, sum by (le) ({rate(histogram + '_bucket')}))"


@dataclass
class Panel:
    """A panel: title, queries, unit, and whether a short local run must fill it (`core`)."""

    title: str
    targets: list[Target]
    unit: str = "short"
    description: str = ""
    kind: str = "timeseries"
    core: bool = True
    log2: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Dashboard:
    uid: str
    title: str
    description: str
    panels: list[Panel]


def training() -> Dashboard:
    """Throughput, loss, LR, data wait, step time, checkpoints, collapse."""
    images, wait = rate("ray_seer_train_images_total"), "ray_seer_train_data_wait_seconds_sum"
    return Dashboard("seer-training", "seer / training", "Ray Train workers of the pretraining", [
        Panel("Images/s, all workers", [(f"sum({images})", "total")], "short",
              "Images trained per second, summed over workers (skipped steps excluded)."),
        Panel("Images/s per worker", [(f"sum by (worker) ({images})", "worker {{worker}}")],
              "short", "One line per Ray Train rank: a slow rank slows every step (DDP)."),
        Panel("SwAV loss", [("max(ray_seer_train_loss)", "loss")], "short",
              "Averaged over ranks (the same on every worker). A loss stuck at ln K is collapse."),
        Panel("Learning rate", [("max(ray_seer_train_lr)", "lr")], "short",
              "Log2 axis: each plateau halving of the fixed-then-halve schedule is one step "
              "down.", log2=True),
        Panel("Data-wait share", [(f"avg({rate(wait)})", "mean"),
                                  (f"max by (worker) ({rate(wait)})", "worker {{worker}}")],
              "percentunit", "Share of wall time a worker waited for its next batch (the ingest "
              "is the bottleneck when this is high)."),
        Panel("Step time", [(quantile(0.5, "ray_seer_train_step_seconds"), "p50"),
                            (quantile(0.95, "ray_seer_train_step_seconds"), "p95")],
              "s", "Compute time of one SwAV step (without the data wait)."),
        Panel("Step and checkpoint step", [
            ("max(ray_seer_train_step)", "step"),
            ("max(ray_seer_train_checkpoint_step)", "newest checkpoint")],
            "short", "A gap that keeps growing means checkpoints stopped."),
        Panel("Checkpoint age", [
            ("time() - max(ray_seer_train_checkpoint_timestamp_seconds)", "age")],
            "s", "Since the newest committed checkpoint (a restarted group sets it at resume)."),
        Panel("Prototype-usage entropy", [
            ("min(ray_seer_train_prototype_entropy_ratio)", "entropy / ln K")],
            "percentunit", "Near 0: the batch uses few prototypes (collapse)."),
        Panel("Embedding effective rank", [
            ("min by (worker) (ray_seer_train_embedding_rank)", "worker {{worker}}")],
            "short", "Directions the batch's embeddings vary in (1: all on a line). Near 1 is "
            "dimensional collapse, which the usage entropy does not show."),
        Panel("Collapse suspected", [("max(ray_seer_train_collapse_suspected_ratio)", "collapse")],
              "short", "1 when the trainer judges a collapse (loss ≈ ln K or entropy near 0)."),
        Panel("SwAV queue fill", [("min(ray_seer_train_queue_fill_ratio)", "fill")],
              "percentunit", "The queue is used only once full (after a resume it refills)."),
        Panel("Checkpoint: step-loop pause, store wait", [
            (quantile(0.99, "ray_seer_train_checkpoint_pause_seconds"), "loop pause p99"),
            ("max(ray_seer_train_store_wait_seconds)", "waiting for the store")],
            "s", "What a checkpoint costs the step loop: the copy into host memory (upload and "
            "commit run beside training). Store wait: how long a worker has been waiting for "
            "an unreachable or throttling store (waited out up to "
            "checkpoint.store_grace_minutes)."),
        Panel("Skipped steps (non-finite loss)", [
            (f"sum(increase(ray_seer_train_skipped_steps_total[{RATE}]))", "skipped")],
            "short", "Exported once a step was skipped (no series on a healthy run).",
            core=False),
    ])


def ingest() -> Dashboard:
    """Ingest throughput and failures, Ray Data's exposed loading time, the object store."""
    failed_rate = rate("ray_seer_ingest_failures_total")
    failures, ok = f"sum({failed_rate})", f"sum({rate('ray_seer_ingest_images_total')})"
    stage = '{operator=~"MapBatches.*"}'  # Ray Data's decode stage: the ingest actors
    return Dashboard("seer-ingest", "seer / ingest and data",
                     "Ingest workers (fetch, decode, multi-crop) and Ray Data", [
        Panel("Ingest images/s", [(ok, "images")], "short",
              "Images turned into multi-crop samples per second, all ingest workers."),
        Panel("Ingest failures by reason", [(f"sum by (reason) ({failed_rate})", "{{reason}}")],
              "short", "Skipped objects per second: vanished, fetch_error, too_large, too_small, "
              "not_image, corrupt."),
        Panel("Ingest failure share", [(f"{failures} / ({ok} + {failures})", "failed / fetched")],
              "percentunit", "The alert fires above 10% for 15 minutes."),
        Panel("Ingest bytes/s", [(f"sum({rate('ray_seer_ingest_bytes_total')})", "fetched")],
              "Bps", "Encoded bytes fetched from the feed."),
        Panel("Fetch and decode time (p95)", [
            (quantile(0.95, "ray_seer_ingest_fetch_seconds"), "fetch p95"),
            (quantile(0.95, "ray_seer_ingest_decode_seconds"), "decode p95")],
            "s", "Fetch includes retries; decode includes the multi-crop."),
        Panel("Ingest actors alive / tasks running", [
            (f"max(ray_data_num_alive_actors{stage})", "actors alive"),
            (f"max(ray_data_num_tasks_running{stage})", "tasks running")],
            "short", "Ray Data's decode stage: the fixed pool of ingest actors."),
        Panel("Ray Data: exposed loading time", [
            ("sum(ray_data_iter_total_blocked_seconds) / sum(ray_data_iter_total_seconds)",
             "blocked / iterating")],
            "percentunit", "Share of the Train workers' iterator time blocked on Ray Data "
            "(cumulative over the passes Ray still reports)."),
        Panel("Ray Data: blocked seconds per split", [
            ("sum by (split) (ray_data_iter_total_blocked_seconds)", "{{split}}")],
            "s", "Cumulative seconds each Train worker's split waited for data."),
        Panel("Object store: spilled bytes", [
            ('sum by (NodeAddress) (ray_object_store_memory{Location="SPILLED"})',
             "spilled {{NodeAddress}}"),
            ('sum(ray_spill_manager_objects_bytes{State="Spilled"})', "spill manager")],
            "bytes", "Should stay 0: an endless read task that spills out-ran the trainer "
            "(DESIGN §5)."),
        Panel("Object store: used", [
            ("sum by (NodeAddress) (ray_object_store_used_memory)", "{{NodeAddress}}")],
            "bytes", "The stream stays under twice ingest.object_store_mb (README: guard "
            "rails)."),
        Panel("Ray Data: spilled bytes per operator", [
            ("sum by (operator) (ray_data_spilled_bytes)", "{{operator}}"),
            ("sum(ray_seer_ingest_spilled_bytes)", "cluster, seen by the stream")],
            "bytes", "Ray Data's per-operator series needs "
            "DataContext.enable_get_object_locations_for_metrics; the seer series is the "
            "cluster's spilled bytes as rank 0 of the trainers polls them.", core=False),
    ])


def evaluation() -> Dashboard:
    """The evaluator's gauges: accuracy against images seen, the gain over random init."""
    top1 = 'seer_eval_accuracy_percent{trunk="checkpoint", metric="top1"}'
    rand = 'seer_eval_accuracy_percent{trunk="random", metric="top1"}'
    xy = {
        "transformations": [{"id": "joinByField", "options": {"byField": "Time", "mode": "outer"}}],
        "options": {"seriesMapping": "auto", "dims": {"x": "images seen"}},
    }
    return Dashboard("seer-eval", "seer / evaluation", "Frozen-trunk evaluation (seer eval)", [
        Panel("Top-1 against images seen", [
            ("max(seer_eval_images_seen)", "images seen"),
            (f"max by (protocol) ({top1})", "{{protocol}}")],
            "percent", "Each point is one evaluated checkpoint (x: images it had seen).",
            kind="xychart", extra=xy),
        Panel("Top-1: checkpoint and random init", [
            ('max by (protocol, trunk) (seer_eval_accuracy_percent{metric="top1"})',
             "{{protocol}} {{trunk}}")],
            "percent", "The dashed-line baseline of the results plot: a random-init trunk."),
        Panel("Gain over random init", [
            (f"max by (protocol) ({top1}) - on (protocol) max by (protocol) ({rand})",
             "{{protocol}}")],
            "percent", "Points of top-1 that pretraining bought."),
        Panel("Evaluated step and newest checkpoint", [
            ("max(seer_eval_checkpoint_step)", "evaluated"),
            ("max(ray_seer_train_checkpoint_step)", "newest checkpoint")],
            "short", "The evaluator lags the trainer by up to one poll plus one evaluation."),
        Panel("Since the last evaluation", [
            ("time() - max(seer_eval_last_success_timestamp_seconds)", "age"),
            ("max(seer_eval_duration_seconds)", "last duration")],
            "s", "Alert on this growing rather than on the evaluator being up."),
        Panel("Evaluator errors by reason", [
            (f"sum by (reason) (increase(seer_eval_errors_total[{RATE}]))", "{{reason}}")],
            "short", "Failed polls: vanished, bad_checkpoint, bad_input, store_error, "
            "no_checkpoint, error.", core=False),
    ])


def render_panel(panel: Panel, index: int) -> dict[str, Any]:
    """Grafana panel JSON (schema 39) laid out two per row."""
    custom: dict[str, Any] = {}
    if panel.log2:
        custom["scaleDistribution"] = {"type": "log", "log": 2}
    out: dict[str, Any] = {
        "id": index + 1, "type": panel.kind, "title": panel.title,
        "description": panel.description, "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": 12, "x": (index % 2) * 12, "y": (index // 2) * 8},
        "fieldConfig": {"defaults": {"unit": panel.unit, "custom": custom}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "none"}},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr,
             "legendFormat": legend or "__auto", "range": True}
            for i, (expr, legend) in enumerate(panel.targets)
        ],
    }
    for key, value in panel.extra.items():
        out[key] = {**out.get(key, {}), **value} if isinstance(value, dict) else value
    return out


def render_dashboard(dash: Dashboard) -> dict[str, Any]:
    """A complete dashboard with a Prometheus datasource variable (for the Grafana sidecar)."""
    return {
        "uid": dash.uid, "title": dash.title, "description": dash.description, "tags": ["seer"],
        "editable": True, "schemaVersion": 39, "version": 1, "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"}, "timezone": "browser",
        "templating": {"list": [{"name": "datasource", "label": "Prometheus", "type": "datasource",
                                 "query": "prometheus", "current": {}, "hide": 0, "refresh": 1}]},
        "annotations": {"list": []},
        "panels": [render_panel(p, i) for i, p in enumerate(dash.panels)],
    }


def dashboards() -> list[Dashboard]:
    return [training(), ingest(), evaluation()]


def prometheus_rule_text(rules_text: str) -> str:
    """`deploy/alerts/seer-rules.yml` as a PrometheusRule (same groups, same order)."""
    groups = yaml.safe_load(rules_text)["groups"]
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "seer", "labels": {"app.kubernetes.io/part-of": "seer",
                                                "release": "kube-prometheus-stack"}},
        "spec": {"groups": groups},
    }
    header = ("# Generated by deploy/dashboards.py from deploy/alerts/seer-rules.yml: edit that "
              "file and rerun.\n")
    return header + yaml.safe_dump(doc, sort_keys=False, width=100, allow_unicode=True)


def outputs() -> dict[Path, str]:
    """Every generated file and its content."""
    files: dict[Path, str] = {}
    for dash in dashboards():
        text = json.dumps(render_dashboard(dash), indent=2, ensure_ascii=False) + "\n"
        files[GRAFANA_DIR / f"{dash.uid}.json"] = text
        files[K8S_DASHBOARDS_DIR / f"{dash.uid}.json"] = text
    files[K8S_RULE_FILE] = prometheus_rule_text(RULES_FILE.read_text())
    return files


def stale() -> list[Path]:
    """Generated files whose committed content differs from what this script writes."""
    return [p for p, text in outputs().items() if not p.exists() or p.read_text() != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a file is out of date")
    args = parser.parse_args(argv)
    if args.check:
        bad = stale()
        for path in bad:
            print(f"out of date: {path.relative_to(ROOT)} (run python deploy/dashboards.py)")
        return 1 if bad else 0
    for path, text in outputs().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
