"""Which cluster the operator and the CLI talk to: as kubectl decides it. --kubeconfig/--context
(before or after the subcommand), else $KUBECONFIG (even inside a pod), else the pod's service
account, else ~/.kube/config."""

from __future__ import annotations

import kopf
import kubernetes
import pytest
import yaml

from slotkeeper import client_config, handlers
from slotkeeper.cli import build_parser


def kubeconfig(path, **servers: str):
    contexts = list(servers)
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": contexts[0],
        "clusters": [{"name": c, "cluster": {"server": url}} for c, url in servers.items()],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": c, "context": {"cluster": c, "user": "u"}} for c in contexts],
    }))
    return str(path)


@pytest.fixture
def in_a_pod(monkeypatch):
    """Make in-cluster config loadable, as in a pod; record whether it was used."""
    used = []

    def load_incluster_config(client_configuration=None):
        used.append(True)
        client_configuration.host = "https://kubernetes.default.svc"
    monkeypatch.setattr(kubernetes.config, "load_incluster_config", load_incluster_config)
    return used


@pytest.mark.parametrize("argv", [
    ["--kubeconfig", "K", "--context", "C", "status", "x"],
    ["status", "x", "--kubeconfig", "K", "--context", "C"],
    ["--kubeconfig", "K", "status", "x", "--context", "C"],
    ["run", "--kubeconfig", "K", "--context", "C"],
    ["promote", "x", "--context", "C", "--kubeconfig", "K"],
])
def test_connection_options_work_before_and_after_the_subcommand(argv):
    args = build_parser().parse_args(argv)
    assert (args.kubeconfig, args.context) == ("K", "C")


def test_an_option_before_the_subcommand_is_not_reset_by_it():
    args = build_parser().parse_args(["--context", "C", "history", "x"])
    assert args.context == "C" and args.kubeconfig is None


def test_kubeconfig_env_wins_over_the_pods_service_account(tmp_path, monkeypatch, in_a_pod):
    monkeypatch.setenv("KUBECONFIG", kubeconfig(tmp_path / "config", laptop="https://laptop.example:6443"))
    client = client_config.build_api_client()
    assert client.configuration.host == "https://laptop.example:6443"
    assert not in_a_pod


def test_context_selects_the_cluster(tmp_path, monkeypatch, in_a_pod):
    monkeypatch.delenv("KUBECONFIG", raising=False)
    path = kubeconfig(tmp_path / "config", one="https://one.example", two="https://two.example")
    assert client_config.build_api_client(path).configuration.host == "https://one.example"
    assert client_config.build_api_client(path, "two").configuration.host == "https://two.example"
    assert not in_a_pod


def test_without_kubeconfig_a_pod_uses_its_service_account(monkeypatch, in_a_pod):
    monkeypatch.delenv("KUBECONFIG", raising=False)
    assert client_config.build_api_client().configuration.host == "https://kubernetes.default.svc"
    assert in_a_pod == [True]


def test_kopf_logs_in_where_the_operator_writes(tmp_path, monkeypatch, in_a_pod):
    """kopf's own fallback login would read neither --kubeconfig nor --context."""
    monkeypatch.delenv("KUBECONFIG", raising=False)
    path = kubeconfig(tmp_path / "config", one="https://one.example", two="https://two.example")
    memo = kopf.Memo(kubeconfig=path, context="two")
    info = handlers.login(memo=memo)
    assert (info.server, info.token, info.scheme) == ("https://two.example", "t", "Bearer")
    assert handlers.login(memo=kopf.Memo(kube_config=object())) is None  # tests bring their own
