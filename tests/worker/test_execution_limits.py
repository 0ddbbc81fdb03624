"""The time and memory limits of a job end as `timeout` and `out-of-memory`, however the
failure reached the worker (the job's own clock, or a library that wrapped the error)."""

from __future__ import annotations

import errno

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from service.core.config import Settings
from worker.execution import JobClock, classify_failure


def test_a_clock_within_its_limit_lets_the_step_run() -> None:
    JobClock(3600).check()


def test_a_clock_past_its_limit_stops_the_step_as_celery_s_soft_limit_would() -> None:
    with pytest.raises(SoftTimeLimitExceeded):
        JobClock(0).check()


def _wrapped(outer: type[Exception], inner: BaseException) -> Exception:
    try:
        try:
            raise inner
        except BaseException as error:
            raise outer("could not load the model") from error
    except Exception as wrapped:  # noqa: BLE001 - the wrapped error is what the worker sees
        return wrapped


def test_a_time_limit_a_library_wrapped_in_its_own_error_is_still_a_timeout() -> None:
    code, message = classify_failure(_wrapped(ValueError, SoftTimeLimitExceeded()), Settings(), 10)
    assert code == "timeout" and "time_limit_s=10" in message


@pytest.mark.parametrize(
    "error",
    [
        MemoryError(),
        _wrapped(ValueError, MemoryError()),
        OSError(errno.ENOMEM, "Cannot allocate memory"),
        RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory"),
        type("RuntimeException", (Exception,), {})("[ONNXRuntimeError] : 6 : Failed to allocate memory for buffer"),
        RuntimeError("std::bad_alloc"),
    ],
    ids=["MemoryError", "wrapped", "ENOMEM", "torch", "onnxruntime", "c++"],
)
def test_every_way_an_allocation_fails_under_the_memory_limit_is_out_of_memory(error: BaseException) -> None:
    code, message = classify_failure(error, Settings(worker_memory_limit_mb=3000))
    assert code == "out-of-memory" and "3000 MiB" in message and "batch_size" in message


def test_an_ordinary_error_is_not_mistaken_for_a_limit() -> None:
    code, _ = classify_failure(ValueError("the labels do not match the outputs"), Settings())
    assert code == "internal-error"
