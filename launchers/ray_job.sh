#!/usr/bin/env bash
# Submit a run to an existing Ray cluster through its job API. The cluster's nodes need
# cdscale installed (same version); the driver joins the cluster with run.ray_address=auto.
#   RAY_ADDRESS=http://HEAD:8265 launchers/ray_job.sh --config configs/addition.yaml
set -euo pipefail
: "${RAY_ADDRESS:?set RAY_ADDRESS to the dashboard address of the cluster, e.g. http://127.0.0.1:8265}"
exec ray job submit --address "$RAY_ADDRESS" -- cdscale run run.ray_address=auto "$@"
