"""benchmark_run times eager PyTorch and each exported engine at every batch size."""

from __future__ import annotations

from torchgraft.artifact import Run
from torchgraft.export import ExportReport, benchmark_run


def test_every_engine_is_timed_at_every_batch_size(exported: ExportReport) -> None:
    run = Run.load(exported.folder.parent)
    report = benchmark_run(run, batch_sizes=(1, 4), seconds=0.05, quiet=True)
    engines = ["eager", "onnxruntime", "aoti", "onnxruntime-int8", "torchscript"]
    assert [(t.engine, t.batch_size) for t in report.timings] == [
        (engine, batch) for engine in engines for batch in (1, 4)
    ]
    for timing in report.timings:
        assert timing.calls >= 5
        assert 0 < timing.p50_ms <= timing.p95_ms
        assert timing.images_per_second > 0
