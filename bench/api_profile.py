"""Where the API spends its time under load: runs the app in-process under uvicorn (same
flags as the compose API) and samples the stacks of *every* thread (event loop and
threadpool) with ``sys._current_frames()`` every ``--interval`` ms while a separate
``bench/api_load.py --base`` process loads it. py-spy is not installed here; this is a
poor man's sampling profiler that sees the threadpool, which cProfile does not.

    .venv/bin/python bench/api_profile.py --db sqlite --clients 50 --seconds 10

Prints the top functions by samples (self = innermost frame of our code or libraries,
inclusive = anywhere on the stack), separately for the event-loop thread and the
worker threads.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import deployment, header, loadavg  # noqa: E402

IDLE = {
    "select",
    "wait",
    "_wait_for_tstate_lock",
    "poll",
    "get",
    "acquire",
    "run_forever",
    "_run_once",
    "epoll",
    "worker",
    "_worker",
    "sleep",
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--clients", default="50")
    parser.add_argument("--seconds", default="10")
    parser.add_argument("--phase", default="poll")
    parser.add_argument("--interval", type=float, default=2.0, help="sampling period, ms")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--uvicorn-args", default="")
    args = parser.parse_args()
    header(f"api_profile db={args.db}")
    with deployment(database=args.db, api=False) as dep:
        os.environ.update(dep.settings.as_env())
        import uvicorn

        from tests.servers import free_port, wait_until

        port = free_port()
        extra = dict(a.split("=", 1) for a in args.uvicorn_args.split()) if args.uvicorn_args else {}
        config = uvicorn.Config(
            "service.main:create_app", factory=True, host="127.0.0.1", port=port, log_level="warning", **extra
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
        thread.start()
        import httpx

        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"{base}/readyz").is_success, 60, "api")
        loop_ident = thread.ident
        self_counts: dict[str, collections.Counter] = {"loop": collections.Counter(), "pool": collections.Counter()}
        incl_counts: dict[str, collections.Counter] = {"loop": collections.Counter(), "pool": collections.Counter()}
        samples = {"loop": 0, "pool": 0}
        stop = threading.Event()
        me = threading.get_ident()

        def sample() -> None:
            while not stop.is_set():
                for ident, frame in sys._current_frames().items():
                    if ident in (me, sampler_ident[0], threading.main_thread().ident):
                        continue
                    kind = "loop" if ident == loop_ident else "pool"
                    stack = []
                    f = frame
                    while f is not None:
                        code = f.f_code
                        stack.append(
                            f"{Path(code.co_filename).parent.name}/{Path(code.co_filename).name}:{code.co_name}"
                        )
                        f = f.f_back
                    top = stack[0]
                    if kind == "pool" and top.rsplit(":", 1)[1] in IDLE and "threading.py" in top:
                        continue  # an idle pool thread
                    samples[kind] += 1
                    self_counts[kind][top] += 1
                    for entry in set(stack):
                        incl_counts[kind][entry] += 1
                time.sleep(args.interval / 1000.0)

        sampler_ident = [None]
        sampler = threading.Thread(target=sample, daemon=True)
        load = subprocess.Popen(
            [
                sys.executable,
                "bench/api_load.py",
                "--base",
                base,
                "--clients",
                args.clients,
                "--seconds",
                args.seconds,
                "--jobs",
                "50",
                "--phases",
                args.phase,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        time.sleep(6)  # model upload + job creation before the measured phase
        sampler.start()
        sampler_ident[0] = sampler.ident
        out, _ = load.communicate()
        stop.set()
        sampler.join()
        print("\n".join(line for line in out.splitlines() if line.startswith("{'phase'")))
        for kind in ("loop", "pool"):
            print(f"\n## {kind} thread(s): {samples[kind]} busy samples")
            print("  self:")
            for name, count in self_counts[kind].most_common(args.top):
                print(f"    {100 * count / max(1, samples[kind]):5.1f}%  {name}")
            print("  inclusive:")
            for name, count in incl_counts[kind].most_common(args.top * 2):
                print(f"    {100 * count / max(1, samples[kind]):5.1f}%  {name}")
        print(f"# load average at end: {loadavg()}")
        server.should_exit = True
        thread.join(10)


if __name__ == "__main__":
    main()
