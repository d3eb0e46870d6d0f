"""benchmarks.stream_pipeline compares like with like: its serial loop writes what the pipelined stream writes."""
from __future__ import annotations

import csv
import json

from helpers.model_folder import make_folder

from benchmarks.stream_pipeline import main


def _scores(path):
    return [(r["frame"], r["score"]) for r in map(json.loads, path.read_text().splitlines())]


def test_serial_and_pipelined_write_the_same_verdicts_and_a_row_each(tmp_path):
    model = make_folder(tmp_path / "model").root
    out = tmp_path / "out"
    assert main(["--model", str(model), "--frames", "5", "--batch-sizes", "1,2", "--repeats", "1",
                 "--spinning", "off", "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "stream_pipeline.csv").open()))
    assert [(r["mode"], r["batch_size"]) for r in rows] == [("serial", "1"), ("pipelined", "1"), ("serial", "2"),
                                                              ("pipelined", "2")]
    assert all(int(r["frames"]) == 5 and float(r["fps"]) > 0 for r in rows)
    assert "| pipelined | 2 | off | 5 |" in (out / "stream_pipeline.md").read_text()
    serial, pipelined = _scores(out / "serial.jsonl"), _scores(out / "pipelined.jsonl")
    assert len(serial) == 5 and serial == pipelined
