"""k8s/: every overlay renders with the real kustomize and is valid, safe and self-consistent.

Custom resources are checked against the CRD schemas with unknown fields as errors, core kinds
with kubernetes-validate (strict), and the rest against what the code does: the RayJob's
entrypoint and the evaluator's arguments go through seer's own CLI parser and config loader, and
the worker groups are sized from the preset the entrypoint loads.
"""

from __future__ import annotations

import copy
import json
import shlex
import tomllib
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from seer_core.config import SeerConfig, load_config
from services.cli import build_parser
from tests.k8s.manifests import (
    CRD_KINDS,
    OVERLAYS,
    REPO,
    by_kind,
    cluster_specs,
    containers,
    crd_schemas,
    one,
    render,
)
from tests.tools import require_kustomize

K8S_VERSION = "1.30.0"
ENVS = ("dev", "prod")


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    kubectl = require_kustomize()
    return {overlay: render(kubectl, overlay) for overlay in OVERLAYS}


def validate_crd(doc: dict[str, Any]) -> None:
    schema = crd_schemas()[(doc["apiVersion"], doc["kind"])]
    jsonschema.Draft7Validator(schema).validate(doc)


def parse_seer(command: str | list[str]) -> tuple[Any, SeerConfig]:
    """A seer command line through the real CLI parser, and the config it loads."""
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    assert argv[0] == "seer", argv
    args = build_parser().parse_args(argv[1:])
    return args, load_config(args.config, args.overrides)


def test_each_overlay_renders_what_its_mode_deploys(rendered) -> None:
    for overlay, docs in rendered.items():
        kinds = [d["kind"] for d in docs]
        assert kinds.count("PodMonitor") == 3, overlay
        assert kinds.count("PrometheusRule") == 1 and kinds.count("CronJob") == 1, overlay
        dashboards = [d for d in by_kind(docs, "ConfigMap")
                      if d["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
        assert len(dashboards) == 3, overlay
        if overlay.endswith("/cluster"):  # `ray job submit` mode: a cluster, no job
            assert kinds.count("RayCluster") == 1 and "RayJob" not in kinds, overlay
        elif overlay != "base":  # the default: the RayJob alone, never two GPU clusters
            assert kinds.count("RayJob") == 1 and "RayCluster" not in kinds, overlay
    assert {d["metadata"].get("namespace") for d in rendered["overlays/prod"]} == {"seer"}
    assert {d["metadata"].get("namespace") for d in rendered["overlays/dev"]} == {"seer-dev"}
    dev_kinds = {d["kind"] for d in rendered["overlays/dev"]}
    assert {"Deployment", "Service", "PersistentVolumeClaim", "Job"} <= dev_kinds  # MinIO
    assert "Deployment" not in {d["kind"] for d in rendered["overlays/prod"]}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_match_the_crd_schemas(rendered, overlay: str) -> None:
    checked = 0
    for doc in rendered[overlay]:
        if doc["kind"] in CRD_KINDS:
            validate_crd(doc)
            checked += 1
    assert checked >= 5


def test_unknown_fields_in_custom_resources_are_errors(rendered) -> None:
    """The CRDs alone accept anything unknown; the strict schema must not (a typo'd field)."""
    job = one(rendered["overlays/prod"], "RayJob")
    validate_crd(job)
    for mutate in (
        lambda d: d["spec"].__setitem__("backofLimit", 3),
        lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"].__setitem__("rayStartParam", {}),
        lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].__setitem__("replica", 2),
        lambda d: d["spec"]["rayClusterSpec"]["authOptions"].__setitem__("mode", "on"),
    ):
        bad = copy.deepcopy(job)
        mutate(bad)
        with pytest.raises(jsonschema.ValidationError):
            validate_crd(bad)
    monitor = copy.deepcopy(by_kind(rendered["overlays/prod"], "PodMonitor")[0])
    monitor["spec"]["podMetricsEndpoints"][0]["prot"] = "metrics"
    with pytest.raises(jsonschema.ValidationError):
        validate_crd(monitor)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_kinds_validate_strictly(rendered, overlay: str) -> None:
    checked = 0
    for doc in rendered[overlay]:
        if doc["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            checked += 1
    assert checked >= 4
    bad = copy.deepcopy(one(rendered[overlay], "CronJob"))
    bad["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_requests_and_limits(rendered, overlay: str) -> None:
    found = 0
    for doc in rendered[overlay]:
        for where, container in containers(doc):
            found += 1
            res = container.get("resources", {})
            name = f"{doc['kind']}/{doc['metadata']['name']} {where}"
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res.get(part, {})), f"{name}: no {part}"
            gpus = res["limits"].get("nvidia.com/gpu")
            assert res["requests"].get("nvidia.com/gpu") == gpus, f"{name}: GPU request != limit"
    assert found >= 4  # head, worker group(s), evaluator (+ submitter, MinIO, seeding)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_s3_credentials_only_by_secret_reference(rendered, overlay: str) -> None:
    docs = rendered[overlay]
    assert not by_kind(docs, "Secret"), "a Secret is rendered: credentials would be in git"
    text = yaml.safe_dump_all(docs)
    for word in ("minioadmin", "AKIA"):
        assert word not in text
    seer_containers = 0
    for doc in docs:
        for where, container in containers(doc):
            env = {e["name"]: e for e in container.get("env", [])}
            for name, entry in env.items():
                if any(w in name for w in ("SECRET", "PASSWORD", "TOKEN", "ACCESS_KEY")):
                    assert "value" not in entry, f"{where}: {name} inlined"
                    assert entry["valueFrom"]["secretKeyRef"]["name"] == "seer-s3", where
            if container["name"] in ("ray-head", "ray-worker", "evaluator"):  # they read S3
                seer_containers += 1
                assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(env), where
    assert seer_containers >= 3


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ray_clusters_use_token_auth_and_the_pinned_ray(rendered, overlay: str) -> None:
    pinned = next(d.split("==")[1] for d in
                  tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
                  if d.startswith("ray["))
    specs = cluster_specs(rendered[overlay])
    assert specs
    for name, spec in specs:
        assert spec["authOptions"]["mode"] == "token", name
        assert spec["rayVersion"] == pinned, name


@pytest.mark.parametrize("env", ENVS)
def test_rayjob_retries_on_the_same_cluster_as_the_raycluster(rendered, env: str) -> None:
    job = one(rendered[f"overlays/{env}"], "RayJob")
    cluster = one(rendered[f"overlays/{env}/cluster"], "RayCluster")
    assert job["spec"]["backoffLimit"] > 0  # each retry: a new cluster, resumed from S3
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    assert job["spec"]["rayClusterSpec"] == cluster["spec"]


def ray_capacity(group: dict[str, Any]) -> tuple[float, float]:
    """CPUs and GPUs one pod of a group advertises to Ray, checked against its container."""
    params = group["rayStartParams"]
    cpus, gpus = float(params["num-cpus"]), float(params.get("num-gpus", 0))
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert float(limits["cpu"]) >= cpus, f"{group.get('groupName')}: Ray sees more CPUs than it has"
    assert float(limits.get("nvidia.com/gpu", 0)) == gpus, group.get("groupName")
    return cpus, gpus


def ingest_cpus(cfg: SeerConfig) -> float:
    """CPUs the stream needs at least: its read tasks and its actor pool (``ingest.actors``;
    0 sizes the pool from the CPUs left, which needs room for one actor)."""
    ing = cfg.ingest
    return (ing.actors or 1) * ing.cpus_per_actor + ing.read_tasks * ing.read_task_cpus


def test_prod_keeps_training_on_gpus_and_ingest_on_cpus(rendered) -> None:
    job = one(rendered["overlays/prod"], "RayJob")
    _, cfg = parse_seer(job["spec"]["entrypoint"])
    assert cfg.train.use_gpu
    spec = job["spec"]["rayClusterSpec"]
    assert ray_capacity(spec["headGroupSpec"]) == (0.0, 0.0)  # nothing runs on the head
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"train-gpu", "ingest-cpu"}
    gpu, cpu = groups["train-gpu"], groups["ingest-cpu"]
    gpu_cpus, gpus = ray_capacity(gpu)
    # Enough GPUs for every Train worker, and exactly their CPUs: none left for ingest there.
    assert gpus * gpu["replicas"] >= cfg.train.num_workers
    assert gpu_cpus == gpus * cfg.train.cpus_per_worker
    cpu_cpus, cpu_gpus = ray_capacity(cpu)
    assert cpu_gpus == 0  # a Train worker (1 GPU) can never land on an ingest node
    assert cpu_cpus * cpu["replicas"] >= ingest_cpus(cfg)
    for group in (gpu, cpu):
        assert group["minReplicas"] == group["replicas"] == group["maxReplicas"]
    assert gpu["labels"] == {"seer-role": "train"} and cpu["labels"] == {"seer-role": "ingest"}


def test_dev_cluster_fits_the_training_and_its_ingest(rendered) -> None:
    job = one(rendered["overlays/dev"], "RayJob")
    _, cfg = parse_seer(job["spec"]["entrypoint"])
    assert not cfg.train.use_gpu
    groups = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    total = 0.0
    for group in groups:
        cpus, gpus = ray_capacity(group)
        assert gpus == 0
        total += cpus * group["replicas"]
    assert total >= cfg.train.num_workers * cfg.train.cpus_per_worker + ingest_cpus(cfg)
    assert cfg.feed.uri.startswith("s3://") and cfg.checkpoint.storage.startswith("s3://")
    env = one([d for d in rendered["overlays/dev"] if d["metadata"]["name"] == "seer-env"],
              "ConfigMap")
    assert env["data"]["SEER_S3_ENDPOINT_URL"] == "http://minio:9000"


def test_dev_seed_job_fills_the_prefixes_the_dev_feeds_read(rendered) -> None:
    """The seeding Job's commands go through seer's CLI parser; what they write is mirrored to
    the RayJob's feed (the sample images) and to shards/ (the shard feed to try), and the shard
    pattern in the comments names the shards `seer seed --shards` makes of that count."""
    from services.cli import DEFAULT_PER_SHARD
    from services.feed.shards.names import expand_shard_pattern

    docs = rendered["overlays/dev"]
    pod = next(d for d in by_kind(docs, "Job")
               if d["metadata"]["name"] == "seer-seed")["spec"]["template"]["spec"]
    seeds = [build_parser().parse_args(shlex.split(line)[1:])
             for line in pod["initContainers"][0]["args"][0].split("&&")]
    assert all(args.command == "seed" for args in seeds)
    mirrors = dict(shlex.split(line)[-2:] for line in pod["containers"][0]["args"][0].split("&&")
                   if line.split()[:2] == ["mc", "mirror"])
    plain = next(a for a in seeds if not a.shards and not a.labelled)
    shards = next(a for a in seeds if a.shards)
    assert shards.format == "both" and shards.count == plain.count
    _, cfg = parse_seer(one(docs, "RayJob")["spec"]["entrypoint"])
    assert cfg.feed.uri == "s3://" + mirrors[plain.out].removeprefix("dev/") + "/"
    assert mirrors[shards.out] == "dev/seer-images/shards"
    count = -(-shards.count // (shards.per_shard or DEFAULT_PER_SHARD))
    uri = f"s3://seer-images/shards/{{00000..{count - 1:05d}}}.tar"
    assert len(expand_shard_pattern(uri)) == count
    for path in ("k8s/overlays/dev/stack/seed-job.yaml",
                 "k8s/overlays/dev/stack/rayjob-patch.yaml"):
        assert uri in (REPO / path).read_text(), path


@pytest.mark.parametrize("env", ENVS)
def test_evaluator_watches_the_run_that_the_job_trains(rendered, env: str) -> None:
    docs = rendered[f"overlays/{env}"]
    _, train_cfg = parse_seer(one(docs, "RayJob")["spec"]["entrypoint"])
    cron = one(docs, "CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]
    container = pod["spec"]["containers"][0]
    args, eval_cfg = parse_seer(container["command"] + container["args"])
    assert args.command == "eval" and args.watch and args.max_polls >= 1
    assert (eval_cfg.checkpoint.storage, eval_cfg.checkpoint.run_name) == (
        train_cfg.checkpoint.storage, train_cfg.checkpoint.run_name)
    # Its gauges are served where the evaluator PodMonitor scrapes them.
    assert args.metrics_addr == "0.0.0.0"
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"]
    assert args.metrics_port == port
    if env == "prod":
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"


@pytest.mark.parametrize("overlay", ["overlays/dev", "overlays/prod", "overlays/prod/cluster"])
def test_pod_monitors_select_pods_with_a_metrics_port(rendered, overlay: str) -> None:
    """Each PodMonitor selects the pods it is for, on a port those pods declare."""
    docs = rendered[overlay]
    pods: list[tuple[dict[str, str], list[dict[str, Any]]]] = []
    for _, spec in cluster_specs(docs):  # KubeRay adds ray.io/node-type to its pods
        head = spec["headGroupSpec"]["template"]
        pods.append(({**head["metadata"]["labels"], "ray.io/node-type": "head"},
                     head["spec"]["containers"][0].get("ports", [])))
        for group in spec["workerGroupSpecs"]:
            t = group["template"]
            pods.append(({**t["metadata"]["labels"], "ray.io/node-type": "worker"},
                         t["spec"]["containers"][0].get("ports", [])))
    t = one(docs, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]
    pods.append((t["metadata"]["labels"], t["spec"]["containers"][0]["ports"]))
    for monitor in by_kind(docs, "PodMonitor"):
        wanted = monitor["spec"]["selector"]["matchLabels"]
        matched = [ports for labels, ports in pods if wanted.items() <= labels.items()]
        assert matched, f"{monitor['metadata']['name']} selects no pod"
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            for ports in matched:
                assert endpoint["port"] in {p["name"] for p in ports}
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    rule = one(docs, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_dashboards_and_rules_in_k8s_are_the_deploy_files(rendered) -> None:
    docs = rendered["overlays/prod"]
    shipped = {}
    for cm in by_kind(docs, "ConfigMap"):
        if cm["metadata"].get("labels", {}).get("grafana_dashboard") == "1":
            (name, text), = cm["data"].items()
            shipped[name] = json.loads(text)
    local = {p.name: json.loads(p.read_text()) for p in (REPO / "deploy/grafana").glob("*.json")}
    assert shipped == local and len(local) == 3
    rules = yaml.safe_load((REPO / "deploy/alerts/seer-rules.yml").read_text())
    assert one(docs, "PrometheusRule")["spec"]["groups"] == rules["groups"]


def test_images_match_the_environment(rendered) -> None:
    for env, flavour in (("dev", "cpu"), ("prod", "gpu")):
        for doc in rendered[f"overlays/{env}"]:
            for where, container in containers(doc):
                image = container["image"]
                if image.startswith("seer"):
                    assert image.endswith(f"-{flavour}"), f"{env} {where}: {image}"
                else:
                    assert ":" in image and not image.endswith(":latest"), image
