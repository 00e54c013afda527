from slotkeeper.views import format_history, format_status

ENDPOINT = {
    "metadata": {"name": "credit", "namespace": "ml"},
    "status": {
        "phase": "RolledBack", "url": "http://credit.ml.svc.cluster.local", "activeSlot": "blue",
        "stableRevision": "aaaa", "failedRevision": "bbbb",
        "slots": {"blue": {"revision": "aaaa", "replicas": 2, "readyReplicas": 2, "autoscaled": True},
                  "green": {"revision": "bbbb", "replicas": 1, "readyReplicas": 0}},
        "traffic": {"blue": 100, "green": 0},
        "checks": [{"name": "errors", "revision": "bbbb", "verdict": "Fail", "lastValue": 0.2,
                    "consecutiveFailures": 2, "message": "error_ratio 0.2 is above max 0.05"}],
        "conditions": [{"type": "RolledBack", "status": "True", "reason": "CheckFailed", "message": "check errors"}],
        "history": [{"time": "t1", "revision": "aaaa", "outcome": "Promoted", "reason": "FirstRevision"},
                    {"time": "t2", "revision": "bbbb", "outcome": "RolledBack", "reason": "CheckFailed"}],
    },
}


def test_status_shows_slots_traffic_checks_conditions_and_events():
    text = format_status(ENDPOINT, [{"lastTimestamp": "t2", "type": "Warning", "reason": "RolledBack",
                                     "message": "reverted to revision aaaa"}])
    lines = text.splitlines()
    assert lines[0] == "ModelEndpoint ml/credit: RolledBack"
    assert any(line.split()[:6] == ["blue", "aaaa", "2", "2", "100%", "yes"] for line in lines)
    assert any(line.split()[:6] == ["green", "bbbb", "1", "0", "0%", "-"] for line in lines)
    assert "error_ratio 0.2 is above max 0.05" in text
    assert "CheckFailed" in text and "reverted to revision aaaa" in text
    assert "failed:    bbbb" in text


def test_history_lists_newest_first():
    rows = format_history(ENDPOINT).splitlines()
    assert rows[1].split()[1:3] == ["bbbb", "RolledBack"]
    assert rows[2].split()[1:3] == ["aaaa", "Promoted"]
    assert format_history({"status": {}}) == "no history yet"


def test_status_names_the_route_its_parents_and_its_weights_as_reported():
    endpoint = {**ENDPOINT, "spec": {"traffic": {"gatewayAPI": {"parentRefs": [
        {"name": "public", "namespace": "gateways", "sectionName": "https"},
        {"group": "", "kind": "Service", "name": "credit"}]}}},
        "status": {**ENDPOINT["status"], "trafficSummary": "blue 80%, green 20%, mirror 10% to green"}}
    lines = format_status(endpoint).splitlines()
    assert "  route:     HTTPRoute credit via Gateway gateways/public (https), Service ml/credit: " \
           "blue 80%, green 20%, mirror 10% to green" in lines
    unreported = {**endpoint, "status": {"phase": "Pending"}}
    assert any(line.endswith(": not reported yet") and "HTTPRoute credit" in line
               for line in format_status(unreported).splitlines())


def test_status_without_gateway_api_has_no_route_line():
    assert "route:" not in format_status(ENDPOINT)
