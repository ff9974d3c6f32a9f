"""An API that is down behind its gateway: how long ``dagster asset materialize`` of a month
takes to fail when every page and count is answered 504 after the gateway's own timeout.

``python -m benchmarks.gateway_down --timeout-s 3 10`` prints one Markdown table row per
gateway timeout: the wall time of the run until it exited, how many 504s the gateway answered
(the simulator's count, printed as it stops), when the run log first warned of the 504s at
the narrowest window, and the error the run ended with.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.end_to_end import (
    MONTH,
    PARTITION,
    REPO,
    RUN_TIMEOUT_S,
    cli_env,
    dagster_home,
    materialize_args,
)
from benchmarks.simulator_process import simulator

ROWS = 2_000
_ERROR = re.compile(r"(GatewayDownError|WindowTooHeavyError|ExportsApiError)\S*:? ([^\n]{0,160})")
_WARNING = "nothing but 504s (gateway timeouts)"
_SERVED_504 = re.compile(r"\b504: (\d+)")


def run(timeout_s: float) -> dict[str, object]:
    """One materialize of a month whose every export request the gateway answers 504 after
    ``timeout_s`` seconds."""
    scratch = Path(tempfile.mkdtemp(prefix="d23-bench-down-"))
    down = ("--max-window-504-hours", "0", "--gateway-timeout-ms", str(timeout_s * 1000))
    said: list[str] = []
    warned_at = None
    log: list[str] = []
    try:
        with simulator(ROWS, MONTH, *down, said=said) as url:
            env = cli_env(url, scratch / "data", dagster_home(scratch / "dagster_home"))
            args = materialize_args("d23_pipeline.definitions", "*", PARTITION)
            started = time.monotonic()
            with subprocess.Popen(
                args,
                env=env,
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            ) as process:
                assert process.stderr is not None
                for line in process.stderr:
                    log.append(line)
                    if warned_at is None and _WARNING in line:
                        warned_at = time.monotonic() - started
                exit_code = process.wait(timeout=RUN_TIMEOUT_S)
            wall_s = time.monotonic() - started
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    error = _ERROR.search("".join(log))
    answered_504 = _SERVED_504.search("".join(said))
    return {
        "timeout_s": timeout_s,
        "wall_s": wall_s,
        "exit_code": exit_code,
        "answered_504": int(answered_504[1]) if answered_504 else None,
        "warned_at_s": warned_at,
        "error": f"{error[1]}: {error[2]}" if error else "(none)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--timeout-s", type=float, nargs="+", default=[3.0])
    args = parser.parse_args()
    print("| gateway timeout | run until it failed | 504s | warned after | error |")
    print("|---|---|---|---|---|")
    for timeout_s in args.timeout_s:
        r = run(timeout_s)
        warned = "-" if r["warned_at_s"] is None else f"{r['warned_at_s']:.0f} s"
        print(
            f"| {r['timeout_s']:g} s | {r['wall_s']:.0f} s (exit {r['exit_code']}) "
            f"| {r['answered_504']} | {warned} | {r['error']} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
