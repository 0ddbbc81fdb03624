"""Child processes that cannot outlive their parent (Linux ``PR_SET_PDEATHSIG``)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import IO

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` for ``subprocess.Popen``: the child gets SIGTERM when its parent dies,
    so a crashed ``shears up`` (or test run) leaves no orphaned worker behind."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Supervisor:
    """Keeps one child process running: when it exits (crash, OOM kill, ``kill -9``) its whole
    process group is killed (orphaned pool processes included) and it is started again after
    a backoff that doubles from ``min_backoff_s`` to ``max_backoff_s`` and resets once a child
    has run for ``stable_s``. Like supervisord's or systemd's ``Restart=always``, in-process
    for ``shears up``."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        log: IO[bytes],
        *,
        min_backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        stable_s: float = 60.0,
        say: Callable[[str], None] = print,
    ) -> None:
        self.name, self.argv, self.env, self.log = name, argv, env, log
        self.min_backoff_s, self.max_backoff_s, self.stable_s = min_backoff_s, max_backoff_s, stable_s
        self.say = say
        self.restarts = 0
        self.process: subprocess.Popen | None = None
        self._started_at = 0.0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"supervise-{name}", daemon=True)

    def _spawn(self) -> None:
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            stdout=self.log,
            stderr=self.log,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        self._started_at = time.monotonic()

    def start(self) -> subprocess.Popen:
        self._spawn()
        self._thread.start()
        return self.process

    def _watch(self) -> None:
        backoff = self.min_backoff_s
        while not self._stopping.wait(0.5):  # how often the child's exit is noticed
            code = self.process.poll()  # also reaps it: no zombie
            if code is None:
                continue
            self._kill_group(self.process.pid)
            if time.monotonic() - self._started_at >= self.stable_s:
                backoff = self.min_backoff_s
            self.say(f"  {self.name} pid {self.process.pid} exited with {code}; restarting in {backoff:g} s")
            if self._stopping.wait(backoff):
                return
            self._spawn()
            self.restarts += 1
            self.say(f"  {self.name} restarted: pid {self.process.pid}")
            backoff = min(backoff * 2, self.max_backoff_s)

    @staticmethod
    def _kill_group(pgid: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM the child (a warm shutdown: its running task finishes), then SIGKILL."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._kill_group(process.pid)
            process.wait()
