"""Run ``vdsmconsole serve`` with cProfile switched on and off by signals.

``python -m bench.profserve OUT.prof serve ...``: SIGUSR1 starts profiling,
SIGUSR2 stops it and writes the statistics to OUT.prof, so that a profile
covers exactly a scenario's measured window (``--profile-tool cprofile``).
"""

from __future__ import annotations

import cProfile
import signal
import sys
from typing import Any

from vdsmconsole.cli import main as vdsmconsole_main


def main() -> None:
    out = sys.argv[1]
    profiler = cProfile.Profile()

    def start(signum: int, frame: Any) -> None:
        profiler.enable()

    def stop(signum: int, frame: Any) -> None:
        profiler.disable()
        profiler.dump_stats(out)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    vdsmconsole_main(sys.argv[2:])


if __name__ == "__main__":
    main()
