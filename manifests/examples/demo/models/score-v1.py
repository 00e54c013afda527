"""Demo model, version 1: a linear score of the features (weight 0.5).

An Azure ML style entry script: the serving image calls init() once, then run(raw_data) for each
request with {"data": <rows>}; a returned dict becomes one output per key.
"""
import json

WEIGHT = 0.5


def init():
    pass


def run(raw_data):
    rows = json.loads(raw_data)["data"]
    return {"predict": [WEIGHT * sum(row) for row in rows]}
