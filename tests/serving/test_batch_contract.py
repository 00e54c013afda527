"""The operator's batch Job and the serving image's batch mode agree: every command line the operator
renders is one the batch mode's parser accepts, with the values it was meant to carry."""

from __future__ import annotations

import pytest

from slotkeeper.api import BatchJob
from slotkeeper.batch import batch_args
from slotkeeper_serving.batch.command import RUN_ID_ENV as SERVING_RUN_ID_ENV
from slotkeeper_serving.batch.command import SHARD_INDEX_ENV, build_parser
from slotkeeper.observe import COMPLETION_INDEX_ANNOTATION

from slotkeeper.batch import RUN_ID_ENV


@pytest.mark.parametrize("fields", [
    {},
    {"keyColumn": "customer", "chunkRows": 5000},
    {"maxFailedRows": 10, "maxFailedFraction": 0.05},
    {"input": "https://data.example.com/in.csv", "output": "file:///tmp/out"},
    {"parallelism": 1},
    {"parallelism": 8},
])
def test_rendered_args_parse_in_the_batch_mode_with_their_values(fields):
    job = BatchJob.model_validate({"name": "nightly", "input": "pvc://data/in/2026",
                                   "output": "pvc://results/nightly", **fields})
    args = batch_args(job)
    assert args[0] == "batch"  # the image's ENTRYPOINT is slotkeeper-serve
    parsed = build_parser().parse_args(args[1:])
    assert parsed.input == ("file:///mnt/batch/data/in/2026" if job.input.startswith("pvc://") else job.input)
    assert parsed.output == ("file:///mnt/batch/results/nightly" if job.output.startswith("pvc://") else job.output)
    assert parsed.key_column == (job.key_column or "id")
    for name in ("chunk_rows", "max_failed_rows", "max_failed_fraction"):
        if getattr(job, name) is not None:
            assert getattr(parsed, name) == getattr(job, name)
    assert parsed.shard_count == (job.parallelism or 1)
    assert parsed.shard_index is None  # each pod's index: the Job controller's $JOB_COMPLETION_INDEX


def test_both_sides_name_the_completion_index_annotation_and_variable_as_kubernetes_does():
    assert SHARD_INDEX_ENV == "JOB_COMPLETION_INDEX"
    assert COMPLETION_INDEX_ANNOTATION == "batch.kubernetes.io/job-completion-index"


def test_both_sides_name_the_run_id_variable_alike():
    assert RUN_ID_ENV == SERVING_RUN_ID_ENV
