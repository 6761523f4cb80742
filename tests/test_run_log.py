"""The one metrics writer: metrics.jsonl and TensorBoard event files say the same, read back with TensorBoard's
own reader (what ``tensorboard --logdir WORKDIR`` shows); the callback sees every record."""

import json

import pytest

from tests.conftest import tensorboard_scalars
from usjepa_jax import run_log


def test_metrics_writer_writes_jsonl_and_tensorboard_alike(tmp_path):
    seen = []
    writer = run_log.MetricsWriter(tmp_path, on_log=lambda run, record: seen.append((run, record)))
    writer.write(10, {"loss": 0.5, "lr": 1e-3, "steps_per_s": 2.0})
    writer.write(10, {"val_loss": 0.75})
    writer.write(20, {"step": 20, "loss": 0.25, "knn_accuracy": 0.4})
    writer.close()
    assert run_log.read_metrics(tmp_path) == {"loss": {10: 0.5, 20: 0.25}, "lr": {10: 1e-3}, "steps_per_s": {10: 2.0},
                                              "val_loss": {10: 0.75}, "knn_accuracy": {20: 0.4}}
    scalars, logged = tensorboard_scalars(tmp_path), run_log.read_metrics(tmp_path)
    assert set(scalars) == set(logged)
    for tag, series in logged.items():
        assert scalars[tag] == pytest.approx(series), tag  # float32 in the event files
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [10, 10, 20]
    assert seen[-1] == (str(tmp_path), {"step": 20, "loss": 0.25, "knn_accuracy": 0.4})
    assert run_log.last_values(tmp_path)["loss"] == 0.25

    run_log.write_scalars(tmp_path / "eval", 20, {"lesion/knn/accuracy": 0.3})  # evaluation results, one shot
    assert tensorboard_scalars(tmp_path / "eval") == {"lesion/knn/accuracy": {20: pytest.approx(0.3)}}


def test_only_process_zero_writes(tmp_path):
    writer = run_log.MetricsWriter(tmp_path, enabled=False)
    writer.write(1, {"loss": 1.0})
    writer.close()
    assert list(tmp_path.iterdir()) == []
