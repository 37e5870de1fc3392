"""metrics.jsonl on resume: lines past the checkpoint go, a line torn by a kill goes, the rest stays."""

from __future__ import annotations

import json

from lorakit.train.progress import MetricsLog, read_metrics


def test_truncate_after_drops_later_and_torn_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "loss": 1.0 / s} for s in range(1, 6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 6, "lo')  # killed mid-append
    MetricsLog(path, 1).truncate_after(3)
    assert read_metrics(path) == rows[:3]
    assert not [p for p in tmp_path.iterdir() if p.name != "metrics.jsonl"]  # no temp file left


def test_truncate_after_without_a_log_does_nothing(tmp_path):
    MetricsLog(tmp_path / "metrics.jsonl", 1).truncate_after(3)
    assert not (tmp_path / "metrics.jsonl").exists()
