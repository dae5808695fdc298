"""The shell that runs inside a Kubernetes training pod: DVC remote in, the work, DVC outputs (and dvc.lock) out.

A pod starts from the image's checkout and is thrown away afterwards, so everything the run made must leave it:
the outputs go to the DVC remote (`dvc push`), and dvc.lock (with params.yaml and the small git-tracked reports)
is what makes them addressable. The script prints dvc.lock to the log and, when the Secret holds GIT_PUSH_URL,
commits those files on a branch `$RESULT_BRANCH_PREFIX<job name>` and pushes it; locally
`git checkout <branch> -- dvc.lock params.yaml reports && dvc pull` then brings the outputs back.
"""

from __future__ import annotations

# No "{{" anywhere: Prefect's base job template would read it as a placeholder.
_PRELUDE = r"""set -euo pipefail
cd "$GAN_ENHANCE_REPO"
if [ -n "${DVC_REMOTE_URL:-}" ]; then
  dvc remote add --local --force --default job "$DVC_REMOTE_URL"
  if [ -n "${DVC_REMOTE_ENDPOINT:-}" ]; then dvc remote modify --local job endpointurl "$DVC_REMOTE_ENDPOINT"; fi
fi
if ! dvc remote default >/dev/null 2>&1; then
  echo "error: no DVC remote, so nothing this pod makes would come back: set DVC_REMOTE_URL (and" \
       "DVC_REMOTE_ENDPOINT for an S3-compatible store), or commit a default remote (dvc remote add -d)" >&2
  exit 2
fi
publish() {
  dvc push "$@"
  echo "--- dvc.lock of this run (with params.yaml it names the outputs just pushed) ---"
  cat dvc.lock
  echo "--- end of dvc.lock ---"
  if [ -n "${GIT_PUSH_URL:-}" ]; then
    branch="${RESULT_BRANCH_PREFIX}${JOB_NAME}"
    git add --update . && git add dvc.lock params.yaml  # also a dvc.lock the checkout did not have yet
    if ! git diff --cached --quiet; then
      git -c user.name=gan-enhance -c user.email=gan-enhance@localhost commit --quiet \
        -m "training run $JOB_NAME: dvc.lock, params.yaml and reports (outputs in the DVC remote)"
    fi
    git push --force "$GIT_PUSH_URL" "HEAD:refs/heads/$branch"
    echo "pushed branch $branch: git fetch && git checkout $branch -- dvc.lock params.yaml reports && dvc pull"
  fi
}
"""

# The Prefect Kubernetes worker passes the flow run's command (`prefect flow-run execute`) as the container's args,
# which this script receives as "$@".
_POOL_RUN = r"""dvc pull --allow-missing
status=0
"$@" || status=$?
if [ "$status" -eq 0 ]; then publish; fi
exit "$status"
"""

# Every node pulls (or makes) the prepared data; torchrun takes the node count, processes per node and the
# rendezvous from the variables the training operator sets (PET_*); node rank 0 records and pushes the outputs.
_TORCHRUN = r"""dvc repro --pull --single-item prepare
torchrun --nnodes="$PET_NNODES" --nproc_per_node="$PET_NPROC_PER_NODE" \
  --rdzv_backend=c10d --rdzv_endpoint="$PET_MASTER_ADDR:$PET_MASTER_PORT" --rdzv_id="$JOB_NAME" \
  --max_restarts={max_restarts} -m gan_enhance train
if [ "$PET_NODE_RANK" = 0 ]; then
  dvc commit --force train
  publish prepare train
fi
"""


def pool_script() -> str:
    """For a flow run on the Kubernetes work pool: pull every DVC output, run the flow run, push on success."""
    return _PRELUDE + _POOL_RUN


def torchrun_script(max_restarts: int) -> str:
    """For each node of a PyTorchJob: prepared data in, `torchrun -m gan_enhance train`, rank 0 pushes."""
    return _PRELUDE + _TORCHRUN.format(max_restarts=int(max_restarts))
