"""The Kubernetes manifests (gan_enhance.launch.kubernetes): the PyTorchJob and the Prefect GPU work pool's base job
template parsed and checked (command, GPUs, rendezvous from the operator, Secret references), the committed
examples in deploy/k8s/ equal to what the generator writes, and the pods' shell run for real with DVC and git
against a local DVC remote and a bare git repository (torchrun replaced by a stand-in that writes the model)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gan_enhance.config import load_params
from gan_enhance.device import TELEMETRY_OFF
from gan_enhance.launch import kubernetes as k8s
from gan_enhance.launch.job_script import pool_script, torchrun_script
from gan_enhance.servers import HOST, free_port, server_process

from .conftest import REPO

# what `make k8s-manifests` passes (Makefile: K8S_IMAGE, K8S_ARGS)
MAKE_ARGS = ["--image", "registry.example.com/gan-enhance-train:latest", "--nodes", "2", "--gpus", "4"]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("k8s")
    assert k8s.main([*MAKE_ARGS, "--params", str(REPO / "params.yaml"), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def job(written: Path) -> dict[str, Any]:
    return yaml.safe_load((written / k8s.PYTORCHJOB_FILE).read_text())


@pytest.fixture(scope="module")
def pool(written: Path) -> dict[str, Any]:
    return json.loads((written / k8s.POOL_FILE).read_text())


def _containers(job: dict[str, Any]) -> list[dict[str, Any]]:
    return [spec["template"]["spec"]["containers"][0] for spec in job["spec"]["pytorchReplicaSpecs"].values()]


def _secret_refs(env: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env if "secretKeyRef" in e.get("valueFrom", {})}


def test_committed_examples_are_what_make_k8s_manifests_writes(written: Path):
    for name in (k8s.POOL_FILE, k8s.PYTORCHJOB_FILE):
        assert (written / name).read_text() == (REPO / "deploy" / "k8s" / name).read_text(), (
            f"deploy/k8s/{name} is stale: run `make k8s-manifests`"
        )


def test_pytorchjob_is_one_master_and_workers_with_gpus(job: dict[str, Any]):
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert {name: spec["replicas"] for name, spec in replicas.items()} == {"Master": 1, "Worker": 1}  # 2 nodes
    assert job["spec"]["nprocPerNode"] == "4"  # the operator's PET_NPROC_PER_NODE: one process per GPU
    port = load_params(REPO / "params.yaml").train.distributed.rdzv_endpoint.rpartition(":")[2]
    for container in _containers(job):
        assert container["name"] == "pytorch"  # the operator reads the master port from this container...
        assert container["ports"] == [{"name": "pytorchjob-port", "containerPort": int(port)}]  # ...and port name
        assert container["resources"]["limits"] == {"nvidia.com/gpu": 4}
        assert container["image"] == "registry.example.com/gan-enhance-train:latest"


def test_each_node_runs_gan_enhance_train_under_torchrun_with_the_operators_rendezvous(job: dict[str, Any]):
    for container in _containers(job):
        assert container["command"][:2] == ["/bin/bash", "-c"]
        script = container["command"][2]
        torchrun = shlex.split(script[script.index("torchrun") :].split(" -m gan_enhance train")[0].replace("\\\n", ""))
        assert torchrun == [
            "torchrun",
            "--nnodes=$PET_NNODES",  # shlex keeps the variables: bash expands them in the pod
            "--nproc_per_node=$PET_NPROC_PER_NODE",
            "--rdzv_backend=c10d",
            "--rdzv_endpoint=$PET_MASTER_ADDR:$PET_MASTER_PORT",
            "--rdzv_id=$JOB_NAME",
            "--max_restarts=0",
        ]
        assert "-m gan_enhance train\n" in script
        names = [e["name"] for e in container["env"]]
        # the rendezvous comes from the operator: the manifest sets none of it (a value here would override it)
        assert not [n for n in names if n.startswith("PET_") or n in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE")]
        job_name = next(e for e in container["env"] if e["name"] == "JOB_NAME")
        assert job_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['training.kubeflow.org/job-name']"


def test_secrets_are_referenced_never_inlined(job: dict[str, Any], pool: dict[str, Any], written: Path):
    pool_container = pool["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    for env, secret in [(c["env"], "gan-enhance-dvc") for c in _containers(job)] + [
        (pool_container["env"], "{{ secret_name }}")
    ]:
        refs = _secret_refs(env)
        assert refs["AWS_ACCESS_KEY_ID"] == {"name": secret, "key": "AWS_ACCESS_KEY_ID"}
        assert refs["AWS_SECRET_ACCESS_KEY"] == {"name": secret, "key": "AWS_SECRET_ACCESS_KEY"}
        assert refs["GIT_PUSH_URL"]["optional"] is True
        assert not [e for e in env if e["name"] in refs and "value" in e]
    for name in (k8s.POOL_FILE, k8s.PYTORCHJOB_FILE):
        assert "--from-literal" not in (written / name).read_text()


def test_pool_template_renders_a_gpu_job_through_prefects_templating(pool: dict[str, Any]):
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.utilities.templating import apply_values

    WorkPoolCreate(name="gpu-k8s", type="kubernetes", base_job_template=pool)  # Prefect's own template checks
    variables = pool["variables"]["properties"]
    defaults = {name: spec["default"] for name, spec in variables.items() if "default" in spec}
    assert defaults["gpu_count"] == 4 and defaults["image"] == "registry.example.com/gan-enhance-train:latest"
    # a deployment's job_variables, e.g. flows.deployments' {"gpu_count": N}, replace the defaults
    rendered = apply_values(pool["job_configuration"], {**defaults, "gpu_count": 2, "secret_name": "team-dvc"})
    pod = rendered["job_manifest"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 2}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert _secret_refs(container["env"])["AWS_SECRET_ACCESS_KEY"]["name"] == "team-dvc"
    assert "args" not in container  # no command given: the worker fills in the flow run's command, "$@" below
    assert container["command"][:2] == ["/bin/bash", "-c"] and container["command"][2] == pool_script()
    assert container["name"] == "prefect-job" and pod["restartPolicy"] == "Never"  # what the worker requires


def test_bad_choices_fail_with_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit):
        k8s.main(["--out", str(tmp_path), "--nodes", "0"])
    assert "nodes and gpus must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        k8s.main(["--out", str(tmp_path), "--node-selector", "gpu"])
    assert "is not KEY=VALUE" in capsys.readouterr().err


# ---- the pods' shell, run for real -------------------------------------------------------------------------------
DVC_YAML = """stages:
  prepare:
    cmd: mkdir -p data && echo prepared > data/prepared.txt
    outs: [data/prepared.txt]
  train:
    cmd: mkdir -p models && echo "trained by dvc repro" > models/generator.txt
    deps: [data/prepared.txt]
    outs: [models/generator.txt]
"""
# stands in for torchrun (a real one would train): records its arguments, writes the model as rank `PET_NODE_RANK`
TORCHRUN = """#!/bin/bash
echo "$@" > "$TORCHRUN_ARGS"
mkdir -p models && echo "trained on node $PET_NODE_RANK of $PET_NNODES" > models/generator.txt
"""


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=180, check=False)


def _git(cwd: Path, *args: str) -> str:
    done = _run(["git", "-c", "user.name=t", "-c", "user.email=t@localhost", *args], cwd)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny git + DVC project (two stages), a bare `origin` and an empty local DVC remote."""
    root = tmp_path_factory.mktemp("pod")
    origin, repo, remote, bin_dir = root / "origin.git", root / "image", root / "remote", root / "bin"
    _git(root, "init", "--quiet", "--bare", str(origin))
    repo.mkdir()
    _git(repo, "init", "--quiet")
    assert _run([str(Path(sys.executable).parent / "dvc"), "init", "--quiet"], repo).returncode == 0
    (repo / "dvc.yaml").write_text(DVC_YAML)
    (repo / "params.yaml").write_text("seed: 0\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "--quiet", "-m", "project")
    bin_dir.mkdir()
    (bin_dir / "torchrun").write_text(TORCHRUN)
    (bin_dir / "torchrun").chmod(0o755)
    return {"root": root, "origin": origin, "repo": repo, "remote": remote, "bin": bin_dir}


def _pod_env(project: dict[str, Path], checkout: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PET_", "GIT_"))}
    env.update(
        PATH=f"{project['bin']}:{Path(sys.executable).parent}:{env['PATH']}",
        GAN_ENHANCE_REPO=str(checkout),
        DVC_REMOTE_URL=str(project["remote"]),
        DVC_REMOTE_ENDPOINT="",
        RESULT_BRANCH_PREFIX="train/",
        GIT_PUSH_URL=str(project["origin"]),
        TORCHRUN_ARGS=str(checkout / "torchrun.args"),
    )
    return {**env, **extra}


def _pod(project: dict[str, Path], name: str) -> Path:
    """A fresh checkout of the project, as the image holds it."""
    checkout = project["root"] / name
    _git(project["root"], "clone", "--quiet", str(project["repo"]), str(checkout))
    return checkout


def _outputs_come_back(project: dict[str, Path], branch: str) -> str:
    """What a developer does after the job: the branch's dvc.lock, then `dvc pull` from the remote."""
    local = project["root"] / f"local-{branch.replace('/', '-')}"
    _git(project["root"], "clone", "--quiet", "--branch", branch, str(project["origin"]), str(local))
    dvc = str(Path(sys.executable).parent / "dvc")
    assert _run([dvc, "remote", "add", "--local", "-d", "store", str(project["remote"])], local).returncode == 0
    pulled = _run([dvc, "pull"], local)
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    status = _run([dvc, "status"], local)
    assert "up to date" in status.stdout, status.stdout  # dvc.lock and the pulled outputs agree: nothing to rerun
    return (local / "models" / "generator.txt").read_text()


@pytest.mark.slow
def test_pytorchjob_nodes_train_and_rank_0_sends_the_outputs_back(project: dict[str, Path]):
    operator = {"PET_NNODES": "2", "PET_NPROC_PER_NODE": "4", "PET_MASTER_ADDR": "job-master-0"}
    operator.update(PET_MASTER_PORT="29400", JOB_NAME="job-a")
    worker = _pod(project, "worker")
    done = _run(["bash", "-c", torchrun_script(0)], worker, _pod_env(project, worker, PET_NODE_RANK="1", **operator))
    assert done.returncode == 0, done.stdout + done.stderr
    args = (worker / "torchrun.args").read_text().split()
    assert args == [
        "--nnodes=2",
        "--nproc_per_node=4",
        "--rdzv_backend=c10d",
        "--rdzv_endpoint=job-master-0:29400",
        "--rdzv_id=job-a",
        "--max_restarts=0",
        "-m",
        "gan_enhance",
        "train",
    ]
    assert (worker / "data" / "prepared.txt").exists()  # every node makes (or pulls) the prepared data
    assert _git(project["origin"], "branch", "--list") == ""  # only rank 0 publishes

    master = _pod(project, "master")
    done = _run(["bash", "-c", torchrun_script(0)], master, _pod_env(project, master, PET_NODE_RANK="0", **operator))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "--- dvc.lock of this run" in done.stdout  # also in the pod's log
    assert _outputs_come_back(project, "train/job-a") == "trained on node 0 of 2\n"


@pytest.mark.slow
def test_pool_pod_pushes_what_the_flow_run_made_and_nothing_after_a_failure(project: dict[str, Path]):
    failing = _pod(project, "pool-failing")
    done = _run(["bash", "-c", pool_script(), "pod", "false"], failing, _pod_env(project, failing, JOB_NAME="run-x"))
    assert done.returncode == 1  # the flow run's exit status
    assert "train/run-x" not in _git(project["origin"], "branch", "--list")

    ok = _pod(project, "pool-ok")
    dvc = str(Path(sys.executable).parent / "dvc")
    done = _run(["bash", "-c", pool_script(), "pod", dvc, "repro"], ok, _pod_env(project, ok, JOB_NAME="run-y"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert _outputs_come_back(project, "train/run-y") == "trained by dvc repro\n"


def test_no_remote_stops_the_pod_before_any_work(project: dict[str, Path]):
    checkout = _pod(project, "no-remote")
    env = _pod_env(project, checkout, JOB_NAME="run-z", DVC_REMOTE_URL="")
    done = _run(["bash", "-c", pool_script(), "pod", "touch", "ran"], checkout, env)
    assert done.returncode == 2 and "no DVC remote" in done.stderr
    assert not (checkout / "ran").exists()


@pytest.mark.slow
def test_deployments_put_retrain_on_the_kubernetes_gpu_pool(tmp_path: Path):
    """`python -m flows.deployments deploy --pool-type kubernetes` against a real `prefect server` on 127.0.0.1."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(TELEMETRY_OFF, PREFECT_HOME=str(tmp_path))
    api = f"http://{HOST}:{port}/api"
    server = [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", HOST, "--port", str(port)]
    with server_process(server, f"{api}/health", tmp_path / "server.log", env, timeout_s=240):
        deploy = [sys.executable, "-m", "flows.deployments", "deploy", "--pool-type", "kubernetes", "--pool", "gpu"]
        done = _run(
            [*deploy, "--image", "registry.example.com/train:1", "--gpus", "2"], REPO, {**env, "PREFECT_API_URL": api}
        )
        assert done.returncode == 0, done.stdout + done.stderr
        with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            pool = client.read_work_pool("gpu")
            deployment = client.read_deployment_by_name("retrain/nightly-gpu")
    assert pool.type == "kubernetes"
    assert pool.base_job_template == k8s.base_job_template(
        k8s.ClusterSettings(image="registry.example.com/train:1", gpus=2)
    )
    assert deployment.work_pool_name == "gpu" and deployment.parameters == {"repo": "/app", "build_bento": False}
    assert deployment.job_variables == {"gpu_count": 2, "repo_dir": "/app", "image": "registry.example.com/train:1"}
    assert deployment.entrypoint == "flows/retrain.py:retrain"  # found in the image's checkout, the pod's workdir
    assert deployment.global_concurrency_limit.limit == 1
