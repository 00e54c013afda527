"""/metrics counts exactly the infer requests made: the operator's error ratio and p95 depend on it."""

from __future__ import annotations

import numpy as np

from slotkeeper_serving.metrics import LATENCY_BUCKETS


def test_metrics_count_exactly_the_infer_requests(start_server, model_files, make_body):
    server = start_server(model_files["logreg"], model_name="counted", model_version="abc123")
    client = server.client
    before = server.counts()

    rows = np.random.RandomState(5).randn(3, 4)
    for _ in range(7):
        assert client.post(server.infer_url(), json=make_body(rows)).status_code == 200
    assert client.post("/v2/models/counted/versions/abc123/infer", json=make_body(rows)).status_code == 200
    failures = [
        client.post(server.infer_url(), content=b"{nope"),
        client.post(server.infer_url(), json=make_body([[1.0, 2.0, 3.0]])),
        client.post(server.infer_url(), json={"inputs": []}),
    ]
    assert [r.status_code for r in failures] == [400, 400, 400]
    # Not counted: other models, other versions, other routes, wrong methods.
    assert client.post("/v2/models/other/infer", json=make_body(rows)).status_code == 404
    assert client.post("/v2/models/counted/versions/zzz/infer", json=make_body(rows)).status_code == 404
    assert client.get(server.infer_url()).status_code == 405
    for path in (
        "/v2/health/live",
        "/v2/health/ready",
        "/v2",
        "/v2/models/counted",
        "/v2/models/counted/ready",
        "/metrics",
    ):
        assert client.get(path).status_code == 200

    after = server.counts()
    assert after["success"] - before["success"] == 8
    assert after["failure"] - before["failure"] == 3
    assert after["observed"] - before["observed"] == 11
    assert after["inf_bucket"] - before["inf_bucket"] == 11
    assert after["in_flight"] == 0


def test_metric_names_labels_and_buckets(start_server, model_files, make_body):
    server = start_server(model_files["logreg"], model_name="named", model_version="v7")
    assert server.client.post(server.infer_url(), json=make_body([[0.0, 0.0, 0.0, 1.0]])).status_code == 200
    response = server.client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    snapshot = server.metrics()
    labels = (("model", "named"), ("version", "v7"))
    assert snapshot[("slotkeeper_requests_total", (("model", "named"), ("outcome", "success"), ("version", "v7")))] == 1
    assert snapshot[("slotkeeper_requests_in_flight", labels)] == 0
    assert snapshot[("slotkeeper_model_ready", labels)] == 1
    buckets = {
        float(dict(key[1])["le"]): value
        for key, value in snapshot.items()
        if key[0] == "slotkeeper_request_duration_seconds_bucket" and dict(key[1])["model"] == "named"
    }
    assert sorted(buckets) == [*LATENCY_BUCKETS, float("inf")]
    # Cumulative buckets: the one request lands in every bucket from its latency up.
    counts = [buckets[bound] for bound in sorted(buckets)]
    assert counts == sorted(counts) and counts[-1] == 1
    assert 0 < snapshot[("slotkeeper_request_duration_seconds_sum", labels)] < 10


def test_in_flight_gauge_counts_requests_being_handled(start_server, score_py_dirs, wait_for):
    import threading

    import httpx

    server = start_server(score_py_dirs["inspect"], model_name="slowpoke")
    body = {"inputs": [{"name": "mode", "shape": [2], "datatype": "INT64", "data": [6, 600]}]}  # sleeps 600 ms
    results = []
    thread = threading.Thread(
        target=lambda: results.append(httpx.post(server.base_url + server.infer_url(), json=body, timeout=10))
    )
    thread.start()
    wait_for(lambda: server.counts()["in_flight"] == 1, timeout=5, what="the request to be in flight")
    thread.join(timeout=10)
    assert results[0].status_code == 200
    assert server.counts()["in_flight"] == 0
