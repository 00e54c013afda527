"""``served_double()``: the API double in its own thread, reachable by a kubeconfig -- also from a
subprocess (as console scripts are run). Only meaningful for the double, so independent of the backend."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .backends import served_double

LIST_NAMESPACES = """
import kubernetes
kubernetes.config.load_kube_config()  # KUBECONFIG, as a console script would
print(sorted(ns.metadata.name for ns in kubernetes.client.CoreV1Api().list_namespace().items))
"""


def test_a_subprocess_reaches_the_double_through_its_kubeconfig(tmp_path: Path) -> None:
    with served_double(tmp_path) as served:
        assert served.kubeconfig == tmp_path / 'kubeconfig'
        done = subprocess.run([sys.executable, '-c', LIST_NAMESPACES], env=served.env(), capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "'default'" in done.stdout and "'kube-system'" in done.stdout
        assert served.call(lambda: served.emulator.resource_version) > 0  # its state, read in its own thread
        assert not served.crashes()
