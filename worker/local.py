"""``shears prune``: the job pipeline on this machine, no server, with a progress bar."""

from __future__ import annotations

from pathlib import Path

from service.core.spec import JobSpec
from worker.pipeline import PipelineInputs, run_pipeline


def prune_locally(
    model: Path,
    dataset: Path | None,
    spec: JobSpec,
    out: Path,
    *,
    architecture: str | None = None,
    device: str = "auto",
    allow_torchscript: bool = False,
) -> dict:
    """Run ``spec`` on local files; artifacts land in ``out``. Returns the job summary."""
    from tqdm import tqdm

    inputs = PipelineInputs(
        model_path=model,
        architecture=architecture,
        dataset_path=dataset,
        builtin_dataset=spec.dataset.builtin if spec.dataset else None,
        allow_torchscript=allow_torchscript,
        device=device,
    )
    with tqdm(total=100.0, unit="%", bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}<{remaining}] {postfix}") as bar:

        def on_progress(event: dict) -> None:
            bar.n = event.get("percent", bar.n)
            stage = event.get("stage", "")
            epoch = f" epoch {event['epoch']}/{event['epochs']}" if "epoch" in event else ""
            accuracy = f" val {event['val_accuracy']:.3f}" if event.get("val_accuracy") is not None else ""
            bar.set_postfix_str(f"{stage}{epoch}{accuracy}")

        outcome = run_pipeline(inputs, spec, out, on_progress=on_progress)
        bar.n = 100.0
        bar.refresh()
    for stale in ("dense.onnx",):
        (out / stale).unlink(missing_ok=True)
    return {**outcome.summary, "files": sorted(outcome.files)}
