"""Deployments of the flows, for a Prefect server (`make prefect-server`, http://127.0.0.1:4200).

    python -m flows.deployments serve    # make flows-serve: this process runs the schedules (flow.serve)
    python -m flows.deployments deploy   # make flows-deploy: deployments on a `process` work pool, which
                                         # `make flows-worker` (prefect worker start --pool gan-enhance) executes
    python -m flows.deployments deploy --pool-type kubernetes --pool gpu-k8s --image REGISTRY/gan-enhance-train:TAG
                                         # retrain on a Kubernetes work pool whose pods get GPUs (flows/README.md)

Both register `retrain` with a cron schedule (default nightly at 03:00 UTC) and `evaluate-champion` on a benchmark
folder (no schedule unless --evaluate-cron is given; run it by hand). The retrain deployments take one run at a time
(deployment concurrency limit 1; further runs queue) and the flow's file lock keeps any two retrains of the same
checkout apart, whichever deployment or command started them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.schedules import Cron

from flows.evaluate_champion import DEFAULT_BENCHMARK, evaluate_champion
from flows.retrain import retrain

REPO = Path(__file__).resolve().parents[1]
NIGHTLY = "0 3 * * *"
TIMEZONE = "UTC"
RETRAIN_NAME = "nightly"  # served: retrain/nightly; on the work pool: retrain/nightly-pool
EVALUATE_NAME = "benchmark"  # evaluate-champion/benchmark, evaluate-champion/benchmark-pool
POOL = "gan-enhance"
ONE_AT_A_TIME = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)
TAGS = ["gan-enhance"]


def _schedules(cron: str | None, timezone: str) -> list[Any]:
    return [Cron(cron, timezone=timezone)] if cron else []


def retrain_deployment(cron: str = NIGHTLY, timezone: str = TIMEZONE, repo: Path = REPO) -> Any:
    """The scheduled retrain that `serve` runs in this process."""
    return retrain.to_deployment(
        name=RETRAIN_NAME,
        schedules=_schedules(cron, timezone),
        parameters={"repo": str(repo)},
        concurrency_limit=ONE_AT_A_TIME,
        tags=[*TAGS, "retrain"],
        description="Retrain when data or params changed, register the challenger, promote it by policy.",
    )


def evaluate_deployment(
    benchmark: str = DEFAULT_BENCHMARK, cron: str | None = None, timezone: str = TIMEZONE, repo: Path = REPO
) -> Any:
    return evaluate_champion.to_deployment(
        name=EVALUATE_NAME,
        schedules=_schedules(cron, timezone),
        parameters={"repo": str(repo), "benchmark": benchmark},
        tags=[*TAGS, "evaluation"],
        description="Re-evaluate the champion on a benchmark folder and log it to MLflow.",
    )


def serve_all(args: argparse.Namespace) -> None:
    """Register both deployments and run their schedules (and runs triggered by hand) until stopped."""
    from prefect import serve

    serve(
        retrain_deployment(args.cron, args.timezone, args.repo),
        evaluate_deployment(args.benchmark, args.evaluate_cron, args.timezone, args.repo),
    )


def ensure_process_pool(name: str) -> None:
    """Create the `process` work pool unless it exists."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))
            print(f"created work pool '{name}' (type process)")
        except ObjectAlreadyExists:
            pass


def ensure_kubernetes_pool(name: str, image: str, gpus: int, repo_dir: str) -> None:
    """Create the `kubernetes` work pool with the GPU base job template (gan_enhance.launch.kubernetes) unless it
    exists."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    from gan_enhance.launch.kubernetes import ClusterSettings, base_job_template

    template = base_job_template(ClusterSettings(image=image, gpus=gpus, repo_dir=repo_dir))
    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=name, type="kubernetes", base_job_template=template))
            print(f"created work pool '{name}' (type kubernetes, {gpus} GPU(s) per flow run)")
        except ObjectAlreadyExists:
            pass


def deploy_kubernetes(args: argparse.Namespace) -> None:
    """Retrain on the Kubernetes pool: each flow run is a pod of the training image with `--gpus` GPUs, which pulls
    the DVC outputs before the run and pushes them after it. evaluate-champion needs no GPU: it stays on the
    process pool (`make flows-deploy`)."""
    if not args.image:
        raise SystemExit("error: --pool-type kubernetes needs --image (the training image, deploy/k8s/Containerfile)")
    ensure_kubernetes_pool(args.pool, args.image, args.gpus, args.repo_dir)
    retrain.deploy(
        name=f"{RETRAIN_NAME}-gpu",
        work_pool_name=args.pool,
        image=args.image,
        build=False,
        push=False,
        schedules=_schedules(args.cron, args.timezone),
        # a bento built in the pod would be lost with it: the serving side rebuilds on the champion alias
        parameters={"repo": args.repo_dir, "build_bento": False},
        concurrency_limit=ONE_AT_A_TIME,
        job_variables={"gpu_count": args.gpus, "repo_dir": args.repo_dir},  # the pod's working dir = the flow's repo
        tags=[*TAGS, "retrain", "gpu"],
        description="Retrain on a GPU pod of the Kubernetes pool; DVC outputs go back through the DVC remote.",
    )


def deploy_all(args: argparse.Namespace) -> None:
    """The same two deployments on a work pool: a worker polling the pool runs each flow run in a child process
    with this checkout as its working directory (Docker or Kubernetes pools: see flows/README.md)."""
    ensure_process_pool(args.pool)
    repo = Path(args.repo).resolve()
    retrain.from_source(source=str(repo), entrypoint="flows/retrain.py:retrain").deploy(
        name=f"{RETRAIN_NAME}-pool",
        work_pool_name=args.pool,
        schedules=_schedules(args.cron, args.timezone),
        parameters={"repo": str(repo)},
        concurrency_limit=ONE_AT_A_TIME,
        tags=[*TAGS, "retrain"],
        description="Retrain when data or params changed, register the challenger, promote it by policy.",
    )
    evaluate_champion.from_source(source=str(repo), entrypoint="flows/evaluate_champion.py:evaluate_champion").deploy(
        name=f"{EVALUATE_NAME}-pool",
        work_pool_name=args.pool,
        schedules=_schedules(args.evaluate_cron, args.timezone),
        parameters={"repo": str(repo), "benchmark": args.benchmark},
        tags=[*TAGS, "evaluation"],
        description="Re-evaluate the champion on a benchmark folder and log it to MLflow.",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("serve", "deploy"))
    parser.add_argument("--cron", default=NIGHTLY, help=f"retrain schedule (default '{NIGHTLY}'; '' for none)")
    parser.add_argument("--timezone", default=TIMEZONE, help="IANA time zone of the cron schedules")
    parser.add_argument("--evaluate-cron", default="", help="evaluate-champion schedule (default: none)")
    parser.add_argument("--benchmark", default=DEFAULT_BENCHMARK, help="benchmark folder for evaluate-champion")
    parser.add_argument("--repo", type=Path, default=REPO, help="project root the flows work on")
    parser.add_argument("--pool", default=POOL, help="work pool for `deploy` (created if missing)")
    parser.add_argument(
        "--pool-type",
        choices=("process", "kubernetes"),
        default="process",
        help="process: both flows in child processes of a worker on this checkout; kubernetes: retrain in GPU pods",
    )
    parser.add_argument("--image", default="", help="kubernetes: the training image with the project checkout")
    parser.add_argument("--gpus", type=int, default=1, help="kubernetes: nvidia.com/gpu per flow run (default: 1)")
    parser.add_argument("--repo-dir", default="/app", help="kubernetes: the checkout inside the image")
    args = parser.parse_args(argv)
    args.cron = args.cron or None
    args.evaluate_cron = args.evaluate_cron or None
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        print(
            "error: PREFECT_API_URL is not set: start the server (`make prefect-server`) and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api (the Makefile's flows-* targets do)",
            file=sys.stderr,
        )
        return 2
    if args.command == "serve":
        serve_all(args)
    else:
        (deploy_kubernetes if args.pool_type == "kubernetes" else deploy_all)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
