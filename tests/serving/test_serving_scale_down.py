"""Scaling down behind a load balancer loses no request when the shutdown delay outlasts the propagation lag.

Three real `slotkeeper-serve` processes (one with two workers) behind a TCP
round-robin balancer that, like kube-proxy, stops choosing a backend only a
second after it was sent SIGTERM; keep-alive and new-connection clients run
through the whole episode; two backends are terminated at once (3 -> 1).
The counterpart with no delay, which does lose requests, is timing-dependent
and lives in benchmarks/serving/scale_down.py.
"""

from __future__ import annotations

import pytest

from .scaledown import scale_down

LAG = 1.0  # endpoint propagation: the balancer keeps sending new connections this long after SIGTERM
DELAY = 3.0  # the servers' shutdown delay, longer than the lag
MIN_REQUESTS = 1000
MIN_NEW_CONNECTIONS = 5  # routed to each leaving backend after its SIGTERM, before it leaves the pool


@pytest.mark.timeout(400)
def test_scale_down_under_load_fails_no_request(tmp_path, model_files):
    figures = scale_down(
        model_files["logreg"],
        tmp_path,
        shutdown_delay=DELAY,
        lag=LAG,
        workers=(1, 2, 1),
        remove=2,
        min_requests=MIN_REQUESTS,
        min_new_connections=MIN_NEW_CONNECTIONS,
    )
    report = f"{figures} (server logs in {tmp_path})"
    print(report)
    assert figures["requests"] >= MIN_REQUESTS, report
    assert figures["failed"] == 0, report
    assert figures["exit_codes"] == {"pod0": 0, "pod1": 0, "pod2": 0}, report
    # The window was exercised: the balancer kept sending new connections to
    # the terminating backends after their SIGTERM, and they took them all.
    assert all(count >= MIN_NEW_CONNECTIONS for count in figures["routed_after_sigterm"].values()), report
    assert figures["refused"] == {"pod0": 0, "pod1": 0}, report
