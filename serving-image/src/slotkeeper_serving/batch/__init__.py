"""Batch mode: `slotkeeper-serve batch` scores files with the model online serving would load.

inputs.py finds and opens the input files, rows.py turns their records into
chunks of feature rows (bad rows kept with a reason), scoring.py predicts a
chunk through the model's own predict (fast path and batching rules of
online serving), rundir.py owns the output layout that makes a run resumable,
outcome.py decides success from the failed-row thresholds, runner.py drives a
run and command.py is its command line.
"""
