"""Demo model that cannot load: init() fails, as it would on a truncated weights file.

The server stays up but never becomes ready, so the rollout reverts when
checks.progressDeadlineSeconds runs out.
"""


def init():
    raise RuntimeError("cannot read the weights: the file is truncated")


def run(raw_data):
    raise AssertionError("never called: init() failed")
