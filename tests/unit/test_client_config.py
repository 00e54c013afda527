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
    assert (info.server, info.as_http_headers()) == ("https://two.example", {"Authorization": "Bearer t"})
    assert handlers.login(memo=kopf.Memo(kube_config=object())) is None  # tests bring their own


# ------------------------------------------------- slotkeeper run: read without the official client


def test_in_a_pod_the_operator_connects_with_its_service_account(tmp_path):
    (tmp_path / "token").write_text("sa-token\n")
    (tmp_path / "namespace").write_text("slotkeeper")
    environ = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    info = client_config.in_cluster_connection(tmp_path, environ)
    assert (info.server, info.token, info.ca_path, info.default_namespace) == \
        ("https://10.0.0.1:443", "sa-token", str(tmp_path / "ca.crt"), "slotkeeper")
    assert client_config.in_cluster_connection(tmp_path, {}) is None  # not in a pod
    assert client_config.in_cluster_connection(tmp_path / "missing", environ) is None


def test_the_kubeconfig_gives_server_ca_client_certificate_and_token_file_relative_to_it(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBECONFIG", raising=False)
    (tmp_path / "token").write_text("from-file\n")
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump({
        "current-context": "a",
        "clusters": [{"name": "c", "cluster": {"server": "https://c.example", "certificate-authority": "ca.pem",
                                               "proxy-url": "http://proxy.example:3128"}}],
        "users": [{"name": "u", "user": {"tokenFile": "token", "client-certificate-data": "Y2VydA==",
                                         "client-key": "/keys/k.pem"}}],
        "contexts": [{"name": "a", "context": {"cluster": "c", "user": "u", "namespace": "ml"}}],
    }))
    info = client_config.load_connection(str(path))
    assert (info.server, info.ca_path, info.token, info.certificate_data, info.private_key_path, info.proxy_url,
            info.default_namespace) == ("https://c.example", str(tmp_path / "ca.pem"), "from-file", "Y2VydA==",
                                        "/keys/k.pem", "http://proxy.example:3128", "ml")


def test_kubeconfig_files_merge_as_kubectl_merges_them_the_first_value_wins(tmp_path):
    first = kubeconfig(tmp_path / "one", one="https://first.example")
    second = kubeconfig(tmp_path / "two", one="https://second.example", two="https://two.example")
    paths = f"{first}:{second}"
    assert client_config.load_connection(paths).server == "https://first.example"
    assert client_config.load_connection(paths, "two").server == "https://two.example"


def test_an_unknown_context_is_an_error_naming_it(tmp_path):
    path = kubeconfig(tmp_path / "config", one="https://one.example")
    with pytest.raises(client_config.ConfigError, match="'nope'"):
        client_config.load_connection(path, "nope")


def test_an_exec_plugin_user_is_left_to_the_official_loader(tmp_path, monkeypatch):
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump({
        "current-context": "eks", "clusters": [{"name": "c", "cluster": {"server": "https://eks.example"}}],
        "users": [{"name": "u", "user": {"exec": {"command": "aws", "apiVersion": "client.authentication.k8s.io/v1"}}}],
        "contexts": [{"name": "eks", "context": {"cluster": "c", "user": "u"}}],
    }))
    loaded = []

    def load_configuration(kubeconfig=None, context=None):
        loaded.append((kubeconfig, context))
        configuration = kubernetes.client.Configuration(host="https://eks.example")
        configuration.api_key = {"authorization": "Bearer from-exec"}
        return configuration
    monkeypatch.setattr(client_config, "load_configuration", load_configuration)
    info = client_config.load_connection(str(path))
    assert loaded == [(str(path), None)]
    assert (info.server, info.as_http_headers()) == ("https://eks.example", {"Authorization": "Bearer from-exec"})
