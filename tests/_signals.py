"""Run the real ``odexport`` CLI in a child process and signal it at a chosen stage."""

from __future__ import annotations

import signal
import subprocess
import sys


def terminate_at_stage(args, stage: str, sig: int = signal.SIGTERM, timeout: float = 120) -> tuple[int, str]:
    """Start ``odexport ARGS``, send ``sig`` once a stderr line contains ``stage``, and return
    ``(exit status, stderr)``; a status killed by the signal reads as ``-sig``."""
    process = subprocess.Popen([sys.executable, "-c", "import sys; from odexport.cli import main; sys.argv[0] = 'odexport'; main()",
                                *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in process.stderr:
        seen.append(line)
        if stage in line:
            process.send_signal(sig)
            break
    err = "".join(seen) + process.stderr.read()
    return process.wait(timeout=timeout), err
