#!/usr/bin/env bash
# Usage: hack/kustomize-apply.sh DIR
# `kubectl apply -k DIR` against $KUBE_CONTEXT, with the images the Makefile names
# ($OPERATOR_IMAGE, $SERVING_IMAGE) in place of the committed tags, and the operator told to default
# to that serving image. The committed manifests stay as they are: DIR is rendered, then applied
# through a throw-away kustomization that only swaps the images.
set -euo pipefail

dir=${1:?usage: hack/kustomize-apply.sh DIR}
: "${OPERATOR_IMAGE:?set OPERATOR_IMAGE (the Makefile does)}"
: "${SERVING_IMAGE:?set SERVING_IMAGE (the Makefile does)}"
: "${KUBE_CONTEXT:?set KUBE_CONTEXT}"

for image in "$OPERATOR_IMAGE" "$SERVING_IMAGE"; do
  if ! [[ $image =~ :[A-Za-z0-9_][A-Za-z0-9_.-]*$ ]]; then
    echo "error: image '$image' needs an explicit tag (name:tag)" >&2
    exit 2
  fi
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

kubectl kustomize "$dir" > "$work/rendered.yaml"
cat > "$work/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - rendered.yaml
images:
  - name: ghcr.io/slotkeeper/operator
    newName: ${OPERATOR_IMAGE%:*}
    newTag: ${OPERATOR_IMAGE##*:}
  - name: ghcr.io/slotkeeper/serving
    newName: ${SERVING_IMAGE%:*}
    newTag: ${SERVING_IMAGE##*:}
patches:
  - target:
      kind: Deployment
      name: slotkeeper-operator
    patch: |-
      apiVersion: apps/v1
      kind: Deployment
      metadata:
        name: slotkeeper-operator
      spec:
        template:
          spec:
            containers:
              - name: operator
                env:
                  - name: SLOTKEEPER_DEFAULT_SERVING_IMAGE
                    value: "${SERVING_IMAGE}"
YAML
kubectl --context "$KUBE_CONTEXT" apply -k "$work"
