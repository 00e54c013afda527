#!/usr/bin/env bash
# make demo: on the kind cluster from `make kind`,
#   1. start a file server for the demo's score.py models (no internet needed),
#   2. create a ModelEndpoint serving model v1 from slot blue,
#   3. roll out v2: blue/green into slot green, validated, then traffic switches,
#   4. roll out a broken model: it never gets ready, and slotkeeper reverts by itself,
# while `kubectl get mep -w` runs in the background, and show `slotkeeper status` and the Events.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${KIND_CLUSTER:=slotkeeper}"
: "${OPERATOR_IMAGE:=ghcr.io/slotkeeper/operator:0.1.0}"
: "${SERVING_IMAGE:=ghcr.io/slotkeeper/serving:0.1.0}"
: "${SLOTKEEPER:=slotkeeper}"
export KUBE_CONTEXT="kind-${KIND_CLUSTER}" OPERATOR_IMAGE SERVING_IMAGE

NS=slotkeeper-demo
NAME=demo
MODELS=http://model-files
WATCH_SECONDS=600

hack/require.sh kubectl "https://kubernetes.io/docs/tasks/tools/"
if ! command -v "$SLOTKEEPER" >/dev/null 2>&1; then
  echo "error: the slotkeeper CLI was not found ('$SLOTKEEPER'): pip install -e . (or set SLOTKEEPER=/path/to/slotkeeper)" >&2
  exit 127
fi

k() { kubectl --context "$KUBE_CONTEXT" "$@"; }
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
die() { echo "error: $*" >&2; exit 1; }

# ------------------------------------------------------------------------------- is there a cluster?
k config get-contexts "$KUBE_CONTEXT" >/dev/null 2>&1 \
  || die "no kube context $KUBE_CONTEXT: run 'make kind' first"
k get --request-timeout=5s customresourcedefinition modelendpoints.slotkeeper.io >/dev/null 2>&1 \
  || die "the cluster behind $KUBE_CONTEXT is unreachable or has no ModelEndpoint CRD: run 'make kind' first"
k -n slotkeeper-system rollout status deployment/slotkeeper-operator --timeout=60s >/dev/null \
  || die "the operator is not running in slotkeeper-system: run 'make kind' first"

# The slotkeeper CLI talks to this cluster only, whatever the current context is.
work=$(mktemp -d)
watch_pid=
cleanup() {
  if [ -n "$watch_pid" ]; then kill "$watch_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
k config view --raw --minify > "$work/kubeconfig"
sk() { KUBECONFIG="$work/kubeconfig" "$SLOTKEEPER" "$@"; }

field() { k -n "$NS" get modelendpoint "$NAME" -o "jsonpath=$1" 2>/dev/null || true; }

# wait_for DESCRIPTION TIMEOUT_SECONDS COMMAND...: poll COMMAND until it succeeds.
wait_for() {
  local what=$1 timeout=$2 deadline=$((SECONDS + $2))
  shift 2
  until "$@"; do
    if ((SECONDS >= deadline)); then
      echo "timed out after ${timeout}s waiting for: $what" >&2
      sk status "$NAME" -n "$NS" >&2 || k -n "$NS" describe modelendpoint "$NAME" >&2 || true
      exit 1
    fi
    sleep 2
  done
}
serving() {  # serving URI: stable revision serves this model, and the endpoint is Healthy
  [ "$(field '{.status.phase}/{.status.stableModelUri}/{.status.observedGeneration}')" \
    = "Healthy/$1/$(field '{.metadata.generation}')" ]
}
phase_is() { [ "$(field '{.status.phase}')" = "$1" ]; }

# ---------------------------------------------------------------------------------------------- 1
step "1/5  Model files: an in-cluster file server for the demo's score.py models"
hack/kustomize-apply.sh manifests/examples/demo
k -n "$NS" rollout status deployment/model-files --timeout=120s
if k -n "$NS" get modelendpoint "$NAME" >/dev/null 2>&1; then
  echo "(removing the endpoint of an earlier run)"
  k -n "$NS" delete modelendpoint "$NAME" --cascade=foreground --wait=true --timeout=120s
fi

# ---------------------------------------------------------------------------------------------- 2
step "2/5  First revision: $MODELS/score-v1.py into slot blue"
k apply -f manifests/examples/demo/endpoint.yaml
echo "(watching: kubectl get mep -n $NS -w, for at most ${WATCH_SECONDS}s)"
k -n "$NS" get modelendpoint "$NAME" --watch \
  --request-timeout="${WATCH_SECONDS}s" 2>/dev/null &
watch_pid=$!
wait_for "revision 1 to serve" 240 serving "$MODELS/score-v1.py"
v1=$(field '{.status.stableRevision}')

# ---------------------------------------------------------------------------------------------- 3
step "3/5  A good new revision: score-v2.py goes to slot green, is validated, then takes the traffic"
k -n "$NS" patch modelendpoint "$NAME" --type merge -p "{\"spec\":{\"model\":{\"uri\":\"$MODELS/score-v2.py\"}}}"
wait_for "revision 2 to be promoted" 300 serving "$MODELS/score-v2.py"
v2=$(field '{.status.stableRevision}')
sk status "$NAME" -n "$NS"

# ---------------------------------------------------------------------------------------------- 4
step "4/5  A broken revision: broken.py fails to load, so slot green never gets ready"
k -n "$NS" patch modelendpoint "$NAME" --type merge -p "{\"spec\":{\"model\":{\"uri\":\"$MODELS/broken.py\"}}}"
echo "(traffic stays on revision $v2; checks.progressDeadlineSeconds is 60 in this demo)"
wait_for "the automatic revert" 240 phase_is RolledBack
kill "$watch_pid" 2>/dev/null || true
watch_pid=

step "Status after the revert"
sk status "$NAME" -n "$NS"
echo
k -n "$NS" get events --field-selector "involvedObject.name=$NAME" --sort-by=.lastTimestamp

# ---------------------------------------------------------------------------------------------- 5
step "5/5  The endpoint still answers, from the last good revision"
k -n "$NS" run demo-client --rm -i --quiet --restart=Never --image="$SERVING_IMAGE" \
  --image-pull-policy=IfNotPresent --command -- python3 -c '
import json, urllib.request
body = json.dumps({"inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]}).encode()
request = urllib.request.Request("http://demo/v2/models/demo/infer", data=body, headers={"Content-Type": "application/json"})
reply = json.load(urllib.request.urlopen(request, timeout=10))
print("POST /v2/models/demo/infer ->", "revision", reply["model_version"], "predict", reply["outputs"][0]["data"])
'
echo
echo "Revisions: v1 $v1, v2 $v2 (serving), broken: rolled back; its slot is kept with 1 pod to inspect:"
echo "  kubectl --context $KUBE_CONTEXT -n $NS logs deploy/$NAME-green"
echo "  kubectl --context $KUBE_CONTEXT -n $NS describe mep $NAME"
echo "Clean up: kubectl --context $KUBE_CONTEXT delete namespace $NS"
