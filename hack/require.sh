#!/usr/bin/env bash
# Usage: hack/require.sh TOOL "where to get it"
# Exits non-zero, saying what to install, when TOOL is not on PATH. For docker it also checks that
# an engine answers, since the CLI alone cannot build images.
set -euo pipefail

tool=${1:?usage: hack/require.sh TOOL "install hint"}
hint=${2:-}

if ! command -v "$tool" >/dev/null 2>&1; then
  echo "error: '$tool' is required but was not found on PATH." >&2
  if [ -n "$hint" ]; then
    echo "       Install it: $hint" >&2
  fi
  exit 127
fi

if [ "$tool" = docker ] && ! docker info >/dev/null 2>&1; then
  echo "error: the docker CLI is installed but no Docker engine answers." >&2
  echo "       Start Docker (Docker Desktop, or the docker/containerd service) and check with: docker info" >&2
  exit 1
fi
