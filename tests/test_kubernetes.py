"""The Kubernetes manifests under deploy/kubernetes (issue 12), validated offline against the Kubernetes API
schemas that the kubernetes-validate package ships, in strict mode (an unknown or misspelt field fails).
tests/test_docker.py runs the same manifests' pods with Docker."""

from __future__ import annotations

import copy
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from conftest import REPO

MANIFESTS = sorted((REPO / "deploy" / "kubernetes").glob("*.yaml"))
# backoffLimitPerIndex is on by default from Kubernetes 1.29 (beta; GA in 1.33).
VERSIONS = ["1.29", kubernetes_validate.latest_version()]


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def label_job() -> dict:
    (job,) = documents(REPO / "deploy" / "kubernetes" / "label-job.yaml")
    return job


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_passes_strict_schema_validation(path, version):
    docs = documents(path)
    assert docs, f"{path} holds no resource"
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_rejects_a_misspelt_field():
    job = copy.deepcopy(label_job())
    job["spec"]["backofLimitPerIndex"] = job["spec"].pop("backoffLimitPerIndex")
    with pytest.raises(kubernetes_validate.ValidationError, match="backofLimitPerIndex"):
        kubernetes_validate.validate(job, VERSIONS[-1], strict=True)


def test_label_job_is_an_indexed_job_of_n_non_root_shards():
    job = label_job()
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    n = spec["completions"]
    assert spec["completionMode"] == "Indexed" and spec["parallelism"] == n and spec["backoffLimitPerIndex"] >= 1
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    env = {var["name"]: var for var in container["env"]}
    assert env["SHARDS"]["value"] == str(n), "SHARDS must equal completions"
    args = container["args"]
    assert args[args.index("--shard") + 1] == "$(JOB_COMPLETION_INDEX)/$(SHARDS)"
    assert "$(JOB_COMPLETION_INDEX)" in args[args.index("--out") + 1], "each shard writes its own CSV"
    mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
    assert args[1] == mounts["photos"]["mountPath"] and mounts["photos"]["readOnly"] is True
    assert args[args.index("--out") + 1].startswith(mounts["labels"]["mountPath"] + "/")
    resources = container["resources"]
    assert set(resources) == {"requests", "limits"} and all(set(resources[k]) == {"cpu", "memory"} for k in resources)
