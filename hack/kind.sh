#!/usr/bin/env bash
# make kind: a kind cluster named $KIND_CLUSTER (created when missing) running this checkout's
# operator: both images (already built by `make images`) loaded into the nodes, manifests/ applied
# with those exact tags, and the operator's rollout waited for.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${KIND_CLUSTER:=slotkeeper}"
: "${OPERATOR_IMAGE:?set OPERATOR_IMAGE (the Makefile does)}"
: "${SERVING_IMAGE:?set SERVING_IMAGE (the Makefile does)}"
export KUBE_CONTEXT="kind-${KIND_CLUSTER}"
export OPERATOR_IMAGE SERVING_IMAGE

hack/require.sh docker "https://docs.docker.com/get-docker/"
hack/require.sh kind "https://kind.sigs.k8s.io/docs/user/quick-start/#installation (e.g. 'go install sigs.k8s.io/kind@latest' or 'brew install kind')"
hack/require.sh kubectl "https://kubernetes.io/docs/tasks/tools/ (1.27 or newer)"

if kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER"; then
  echo "==> kind cluster '$KIND_CLUSTER' exists"
else
  echo "==> creating kind cluster '$KIND_CLUSTER'"
  kind create cluster --name "$KIND_CLUSTER" --wait 120s
fi

echo "==> loading $OPERATOR_IMAGE and $SERVING_IMAGE into the cluster's nodes"
kind load docker-image --name "$KIND_CLUSTER" "$OPERATOR_IMAGE" "$SERVING_IMAGE"

existed=false
if kubectl --context "$KUBE_CONTEXT" -n slotkeeper-system get deployment slotkeeper-operator >/dev/null 2>&1; then
  existed=true
fi

echo "==> installing the CRD and the operator (manifests/)"
hack/kustomize-apply.sh manifests
kubectl --context "$KUBE_CONTEXT" wait --for condition=Established --timeout=60s \
  customresourcedefinition/modelendpoints.slotkeeper.io

if $existed; then
  # An image rebuilt under the same tag does not change the Deployment: restart to pick it up.
  kubectl --context "$KUBE_CONTEXT" -n slotkeeper-system rollout restart deployment/slotkeeper-operator
fi
kubectl --context "$KUBE_CONTEXT" -n slotkeeper-system rollout status deployment/slotkeeper-operator --timeout=180s

echo
echo "slotkeeper runs in kind cluster '$KIND_CLUSTER' (kube context $KUBE_CONTEXT)."
echo "Next: make demo    # a good rollout, then a broken one that reverts"
echo "      make e2e     # the end-to-end tests"
