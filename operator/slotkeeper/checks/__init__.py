"""Checks and canary building blocks: pure evaluation and parsing, plus a thin async I/O layer.

Pure (no I/O, no clock of their own): :mod:`.verdicts` (a value -> Pass/Fail/Inconclusive and the
per-check streaks), :mod:`.pod_metrics` (the serving image's /metrics text -> derived numbers),
:mod:`.canary` (a canary weight -> slot replicas), the parsing halves of :mod:`.prometheus`,
:mod:`.web` and :mod:`.validation`.

I/O (aiohttp, one call each, never retried here: the decision's next wake-up is the retry):
:func:`.scrape.scrape_pods`, :func:`.prometheus.query_prometheus`, :func:`.web.fetch_web_value`,
:func:`.validation.run_validation`. Metric sources raise :class:`.verdicts.MetricUnavailable` when they
cannot measure; the caller turns that into an Inconclusive verdict with the message.
"""
