"""Kubernetes manifests for training beyond this machine, written to deploy/k8s/ (`make k8s-manifests`).

    python -m gan_enhance.launch.kubernetes --image REGISTRY/gan-enhance-train:TAG --nodes 2 --gpus 4

- `prefect-gpu-pool.json`: the base job template of a Prefect work pool of type kubernetes whose flow runs (the
  retrain flow) get `nvidia.com/gpu` GPUs: `prefect work-pool create gpu-k8s --type kubernetes
  --base-job-template deploy/k8s/prefect-gpu-pool.json` (or `python -m flows.deployments deploy --pool-type
  kubernetes`). It starts from the Kubernetes worker's default template that Prefect ships and adds the GPU limit,
  node selector and tolerations, the DVC remote's credentials from a Secret, and a wrapper that runs `dvc pull`
  before the flow run and `dvc push` after it.
- `pytorchjob.yaml`: a Kubeflow PyTorchJob (kubeflow.org/v1, the training operator) of N nodes x G GPUs; each
  node runs `torchrun ... -m gan_enhance train` with the rendezvous the operator sets (PET_MASTER_ADDR,
  PET_MASTER_PORT, PET_NNODES, PET_NPROC_PER_NODE), and node rank 0 pushes the outputs to the DVC remote.

Both run the training image (the repository checkout with CUDA torch, DVC and dvc-s3; deploy/k8s/Containerfile),
not the bento: a bento holds the service and one exported model, but training needs dvc.yaml, params.yaml,
dvc.lock and git. Credentials stay in a Secret (`kubectl create secret generic gan-enhance-dvc
--from-literal=AWS_ACCESS_KEY_ID=... --from-literal=AWS_SECRET_ACCESS_KEY=...`, optionally GIT_PUSH_URL); the
manifests only reference it.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from gan_enhance.config import load_params
from gan_enhance.device import TELEMETRY_OFF
from gan_enhance.launch.job_script import pool_script, torchrun_script

OUT = Path("deploy/k8s")
POOL_FILE = "prefect-gpu-pool.json"
PYTORCHJOB_FILE = "pytorchjob.yaml"
GPU = "nvidia.com/gpu"
GPU_TOLERATION = {"key": GPU, "operator": "Exists", "effect": "NoSchedule"}  # the usual taint of GPU node pools
SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")  # what DVC's S3 remote reads
OPTIONAL_SECRET_KEYS = ("GIT_PUSH_URL",)  # e.g. https://TOKEN@git.example.com/team/gan-enhance.git
# The training operator finds the master's port by this container and port name (kubeflow.org/v1 defaults).
PYTORCH_CONTAINER = "pytorch"
PYTORCH_PORT_NAME = "pytorchjob-port"
# Where Prefect keeps the Kubernetes worker's default base job template (read offline, no worker package needed).
_WORKER_METADATA = "collections_data/views/aggregate-worker-metadata.json"


@dataclass(frozen=True)
class ClusterSettings:
    """What the operator chooses: image, namespace, Secret, services the pods reach, and the GPUs."""

    image: str = "registry.example.com/gan-enhance-train:latest"
    namespace: str = "default"
    secret: str = "gan-enhance-dvc"
    repo_dir: str = "/app"  # the checkout inside the image
    mlflow_tracking_uri: str = "http://mlflow.gan-enhance.svc:5000"
    dvc_remote_url: str = ""  # empty: the default remote committed in .dvc/config
    dvc_remote_endpoint: str = ""  # S3-compatible stores (SeaweedFS, MinIO): their endpoint URL
    result_branch_prefix: str = "train/"
    name: str = "gan-enhance-train"
    nodes: int = 1
    gpus: int = 1  # per pod (per node in the PyTorchJob)
    rdzv_port: int = 29400
    max_restarts: int = 0
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, str], ...] = (GPU_TOLERATION,)


def settings_from_params(params_file: Path, **chosen: Any) -> ClusterSettings:
    """Settings whose node count, GPUs per node, rendezvous port and restarts default to params.yaml's
    train.distributed (what `gan-enhance train` itself launches with); `chosen` (not None) wins."""
    dist = load_params(params_file).train.distributed
    defaults: dict[str, Any] = {
        "nodes": dist.nnodes,
        "rdzv_port": int(dist.rdzv_endpoint.rpartition(":")[2]),
        "max_restarts": dist.max_restarts,
    }
    if isinstance(dist.nproc_per_node, int):
        defaults["gpus"] = dist.nproc_per_node
    settings = ClusterSettings(**{**defaults, **{k: v for k, v in chosen.items() if v is not None}})
    if settings.nodes < 1 or settings.gpus < 1:
        raise ValueError(f"nodes and gpus must be >= 1 (got {settings.nodes} nodes, {settings.gpus} GPUs per node)")
    return settings


def _env(pairs: dict[str, str]) -> list[dict[str, Any]]:
    return [{"name": key, "value": value} for key, value in pairs.items()]


def secret_env(secret: str) -> list[dict[str, Any]]:
    """The DVC remote's keys (and the optional git push URL) as references to the Secret, never their values."""
    required = [{"name": k, "valueFrom": {"secretKeyRef": {"name": secret, "key": k}}} for k in SECRET_KEYS]
    optional = [
        {"name": k, "valueFrom": {"secretKeyRef": {"name": secret, "key": k, "optional": True}}}
        for k in OPTIONAL_SECRET_KEYS
    ]
    return required + optional


def default_base_job_template() -> dict[str, Any]:
    """The Kubernetes worker's default base job template, as `prefect work-pool get-default-base-job-template
    --type kubernetes` prints it, read from the copy the installed Prefect ships."""
    resource = files("prefect.server.api").joinpath(_WORKER_METADATA)
    try:
        metadata = json.loads(resource.read_text())
        return metadata["prefect-kubernetes"]["kubernetes"]["default_base_job_configuration"]
    except (FileNotFoundError, KeyError) as exc:
        raise RuntimeError(
            "this Prefect does not ship the Kubernetes worker's default template; write it with `prefect work-pool "
            "get-default-base-job-template --type kubernetes > base.json` and pass --base-template base.json"
        ) from exc


def _variable(title: str, description: str, default: Any, kind: str) -> dict[str, Any]:
    return {"title": title, "description": description, "default": default, "type": kind}


def base_job_template(settings: ClusterSettings, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The work pool's base job template: `base` (default: Prefect's own) plus GPUs, scheduling, the DVC
    round trip and the Secret. Deployments change GPUs and the rest through job_variables."""
    template = copy.deepcopy(base or default_base_job_template())
    manifest = template["job_configuration"]["job_manifest"]
    pod = manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    container["resources"].setdefault("limits", {})[GPU] = "{{ gpu_count }}"
    container["command"] = ["/bin/bash", "-c", pool_script(), "gan-enhance-pool"]
    container["workingDir"] = "{{ repo_dir }}"
    # A list here (not "{{ env }}") keeps the Secret references; the worker puts the deployment's env before it.
    container["env"] = [
        *_env(TELEMETRY_OFF),
        *_env(
            {
                "GAN_ENHANCE_REPO": "{{ repo_dir }}",
                "MLFLOW_TRACKING_URI": "{{ mlflow_tracking_uri }}",
                "DVC_REMOTE_URL": "{{ dvc_remote_url }}",
                "DVC_REMOTE_ENDPOINT": "{{ dvc_remote_endpoint }}",
                "RESULT_BRANCH_PREFIX": "{{ result_branch_prefix }}",
            }
        ),
        {"name": "JOB_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        *secret_env("{{ secret_name }}"),
    ]
    pod["nodeSelector"] = "{{ node_selector }}"
    pod["tolerations"] = "{{ tolerations }}"
    props = template["variables"]["properties"]
    props["image"]["default"] = settings.image
    props["namespace"]["default"] = settings.namespace
    props.update(
        {
            "gpu_count": _variable(
                "GPUs", f"{GPU} limit of the flow run's pod (0: a CPU pod).", settings.gpus, "integer"
            )
            | {"minimum": 0},
            "node_selector": _variable(
                "Node selector", "Labels of the nodes to run on.", settings.node_selector, "object"
            ),
            "tolerations": _variable(
                "Tolerations",
                "Taints the pod tolerates (GPU nodes are often tainted).",
                list(settings.tolerations),
                "array",
            ),
            "repo_dir": _variable("Repository", "The project checkout inside the image.", settings.repo_dir, "string"),
            "mlflow_tracking_uri": _variable(
                "MLflow tracking URI", "An MLflow server the pods reach.", settings.mlflow_tracking_uri, "string"
            ),
            "dvc_remote_url": _variable(
                "DVC remote URL",
                "e.g. s3://dvc/gan-enhance; empty: the committed default remote.",
                settings.dvc_remote_url,
                "string",
            ),
            "dvc_remote_endpoint": _variable(
                "DVC remote endpoint",
                "Endpoint URL of an S3-compatible store; empty: AWS.",
                settings.dvc_remote_endpoint,
                "string",
            ),
            "secret_name": _variable(
                "Secret",
                f"Secret with {', '.join(SECRET_KEYS)} (and optionally {', '.join(OPTIONAL_SECRET_KEYS)}).",
                settings.secret,
                "string",
            ),
            "result_branch_prefix": _variable(
                "Result branch prefix",
                "dvc.lock is pushed to <prefix><pod name> when GIT_PUSH_URL is set.",
                settings.result_branch_prefix,
                "string",
            ),
        }
    )
    return template


def _pod(settings: ClusterSettings) -> dict[str, Any]:
    container = {
        "name": PYTORCH_CONTAINER,
        "image": settings.image,
        "imagePullPolicy": "IfNotPresent",
        "workingDir": settings.repo_dir,
        "command": ["/bin/bash", "-c", torchrun_script(settings.max_restarts)],
        "env": [
            *_env(TELEMETRY_OFF),
            *_env(
                {
                    "GAN_ENHANCE_REPO": settings.repo_dir,
                    "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
                    "DVC_REMOTE_URL": settings.dvc_remote_url,
                    "DVC_REMOTE_ENDPOINT": settings.dvc_remote_endpoint,
                    "RESULT_BRANCH_PREFIX": settings.result_branch_prefix,
                }
            ),
            # the same on every node: torchrun's rendezvous id, and the result branch's name
            {
                "name": "JOB_NAME",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['training.kubeflow.org/job-name']"}},
            },
            *secret_env(settings.secret),
        ],
        "ports": [{"name": PYTORCH_PORT_NAME, "containerPort": settings.rdzv_port}],
        "resources": {"limits": {GPU: settings.gpus}},
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],  # NCCL needs more than the default 64 MB
    }
    spec: dict[str, Any] = {
        "containers": [container],
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory"}}],
        "tolerations": list(settings.tolerations),
    }
    if settings.node_selector:
        spec["nodeSelector"] = dict(settings.node_selector)
    return {"spec": spec}


def pytorchjob(settings: ClusterSettings) -> dict[str, Any]:
    """A PyTorchJob: one Master and nodes - 1 Workers, each pod with `gpus` GPUs and as many training processes."""
    replica = {"restartPolicy": "Never", "template": _pod(settings)}
    replicas = {"Master": {"replicas": 1, **replica}}
    if settings.nodes > 1:
        replicas["Worker"] = {"replicas": settings.nodes - 1, **copy.deepcopy(replica)}
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {
            "name": settings.name,
            "namespace": settings.namespace,
            "labels": {"app.kubernetes.io/name": "gan-enhance", "app.kubernetes.io/component": "training"},
        },
        "spec": {
            "nprocPerNode": str(settings.gpus),
            "runPolicy": {"cleanPodPolicy": "None", "backoffLimit": 0},
            "pytorchReplicaSpecs": replicas,
        },
    }


class _Literal(str):
    """A string YAML writes as a block (the pod scripts stay readable)."""


def _literal(dumper: yaml.SafeDumper, value: _Literal) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")


def _blocks(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _blocks(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_blocks(v) for v in tree]
    return _Literal(tree) if isinstance(tree, str) and "\n" in tree else tree


def to_yaml(manifest: dict[str, Any]) -> str:
    dumper = type("BlockDumper", (yaml.SafeDumper,), {})
    dumper.add_representer(_Literal, _literal)
    return yaml.dump(_blocks(manifest), Dumper=dumper, sort_keys=False, width=120)


def write(settings: ClusterSettings, out: Path, base: dict[str, Any] | None = None) -> list[Path]:
    """Write the work pool's base job template and the PyTorchJob into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    pool = out / POOL_FILE
    pool.write_text(json.dumps(base_job_template(settings, base), indent=2) + "\n")
    job = out / PYTORCHJOB_FILE
    job.write_text(
        f"# {settings.nodes} node(s) x {settings.gpus} GPU(s); generated by `python -m gan_enhance.launch.kubernetes`"
        " (make k8s-manifests)\n" + to_yaml(pytorchjob(settings))
    )
    return [pool, job]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gan_enhance.launch.kubernetes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = ClusterSettings()
    parser.add_argument("--out", type=Path, default=OUT, help="folder to write into (default: %(default)s)")
    parser.add_argument(
        "-p",
        "--params",
        type=Path,
        default=Path("params.yaml"),
        help="params file (node and GPU defaults: train.distributed)",
    )
    parser.add_argument("--image", default=defaults.image, help="training image (default: %(default)s)")
    parser.add_argument("--namespace", default=defaults.namespace)
    parser.add_argument(
        "--secret", default=defaults.secret, help=f"Secret holding {', '.join(SECRET_KEYS)} (default: %(default)s)"
    )
    parser.add_argument(
        "--repo-dir", default=defaults.repo_dir, help="the checkout inside the image (default: %(default)s)"
    )
    parser.add_argument("--mlflow-tracking-uri", default=defaults.mlflow_tracking_uri, help="(default: %(default)s)")
    parser.add_argument(
        "--dvc-remote-url", default="", help="e.g. s3://dvc/gan-enhance (default: the committed default remote)"
    )
    parser.add_argument("--dvc-remote-endpoint", default="", help="endpoint URL of an S3-compatible store")
    parser.add_argument("--name", default=defaults.name, help="PyTorchJob name (default: %(default)s)")
    parser.add_argument("--nodes", type=int, help="PyTorchJob nodes (default: train.distributed.nnodes)")
    parser.add_argument(
        "--gpus", type=int, help="GPUs per pod (default: train.distributed.nproc_per_node, or 1 for 'auto')"
    )
    parser.add_argument("--max-restarts", type=int, help="torchrun restarts (default: train.distributed.max_restarts)")
    parser.add_argument("--node-selector", action="append", default=[], metavar="KEY=VALUE", help="repeatable")
    parser.add_argument(
        "--base-template", type=Path, help="a base job template to start from instead of Prefect's default"
    )
    args = parser.parse_args(argv)
    selector = {}
    for item in args.node_selector:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(
                f"--node-selector {item!r} is not KEY=VALUE (e.g. nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3)"
            )
        selector[key] = value
    try:
        settings = settings_from_params(
            args.params,
            image=args.image,
            namespace=args.namespace,
            secret=args.secret,
            repo_dir=args.repo_dir,
            mlflow_tracking_uri=args.mlflow_tracking_uri,
            dvc_remote_url=args.dvc_remote_url,
            dvc_remote_endpoint=args.dvc_remote_endpoint,
            name=args.name,
            nodes=args.nodes,
            gpus=args.gpus,
            max_restarts=args.max_restarts,
            node_selector=selector,
        )
    except ValueError as exc:
        parser.error(str(exc))
    base = json.loads(args.base_template.read_text()) if args.base_template else None
    for path in write(settings, args.out, base):
        print(f"wrote {path}")
    print(
        f"work pool: prefect work-pool create gpu-k8s --type kubernetes --base-job-template {args.out / POOL_FILE}\n"
        f"multi-node: kubectl apply -f {args.out / PYTORCHJOB_FILE}   (needs the Kubeflow training operator and the "
        f"Secret {settings.secret})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
