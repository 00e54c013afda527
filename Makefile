# slotkeeper: tests, the CRD, images, and a kind cluster to try it on.
# `make help` lists the targets.

# Image names and tags: set here, once. manifests/operator/kustomization.yaml (images:),
# manifests/operator/deployment.yaml (SLOTKEEPER_DEFAULT_SERVING_IMAGE),
# manifests/examples/demo/kustomization.yaml and slotkeeper.api.DEFAULT_SERVING_IMAGE carry the
# same defaults; tests/unit/test_manifests.py fails when they drift. Override for a build of your
# own, e.g. `make kind VERSION=dev` (the kind and demo targets deploy these exact images).
REGISTRY       ?= ghcr.io/slotkeeper
VERSION        ?= 0.1.0
OPERATOR_IMAGE ?= $(REGISTRY)/operator:$(VERSION)
SERVING_IMAGE  ?= $(REGISTRY)/serving:$(VERSION)

KIND_CLUSTER ?= slotkeeper
KIND_CONTEXT ?= kind-$(KIND_CLUSTER)
# The cluster `make e2e` tests: kind's by default, any kube context otherwise (E2E_CONTEXT=my-cluster).
E2E_CONTEXT  ?= $(KIND_CONTEXT)

# The project's virtualenv (hack/venv.sh makes it; `make test` and `make demo` do that first).
VENV       := .venv
PYTHON     ?= $(VENV)/bin/python
SLOTKEEPER ?= $(VENV)/bin/slotkeeper

CRD_FILE := modelendpoints.slotkeeper.io.yaml

export OPERATOR_IMAGE SERVING_IMAGE KIND_CLUSTER KIND_CONTEXT SLOTKEEPER

.PHONY: help test venv crd images image-operator image-serving kind kind-delete demo e2e

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

test: $(VENV)/.installed ## create the venv, install, and run the README's test command (e2e tests skip without a cluster)
	. $(VENV)/bin/activate && python -m pytest tests

venv: $(VENV)/.installed ## the virtualenv with both packages and their test extras

$(VENV)/.installed: pyproject.toml serving-image/pyproject.toml hack/venv.sh
	hack/venv.sh
	touch $@

crd: $(VENV)/.installed ## regenerate the CRD from the API models into crds/ and manifests/crd/
	$(SLOTKEEPER) crd --output crds/
	cp crds/$(CRD_FILE) manifests/crd/$(CRD_FILE)

images: image-operator image-serving ## build both images

image-operator:
	@hack/require.sh docker "https://docs.docker.com/get-docker/"
	docker build -f operator/Dockerfile -t $(OPERATOR_IMAGE) .

image-serving:
	@hack/require.sh docker "https://docs.docker.com/get-docker/"
	docker build -f serving-image/Dockerfile -t $(SERVING_IMAGE) serving-image

kind: images ## create the kind cluster if missing, load both images, install the operator
	hack/kind.sh

kind-delete: ## delete the kind cluster
	@hack/require.sh kind "https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
	kind delete cluster --name $(KIND_CLUSTER)

demo: kind $(VENV)/.installed ## from a fresh clone: kind cluster (if missing), both images, install, then the demo
	hack/demo.sh

e2e: $(VENV)/.installed ## run the e2e tests against the kind cluster (make kind first), or E2E_CONTEXT=<any kube context>
	SLOTKEEPER_E2E_CONTEXT=$(E2E_CONTEXT) SLOTKEEPER_E2E_SERVING_IMAGE=$(SERVING_IMAGE) \
		$(PYTHON) -m pytest tests/e2e -m e2e
