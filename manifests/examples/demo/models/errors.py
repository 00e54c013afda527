"""Demo model that loads and becomes ready, then fails every request (HTTP 500).

Readiness alone cannot catch it; a `pods` metric check on error_ratio does, once traffic reaches it.
"""


def init():
    pass


def run(raw_data):
    raise RuntimeError("the feature service is unreachable")
