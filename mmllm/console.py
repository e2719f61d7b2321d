"""What a command prints when it ends: a JSON report on stdout, or the project's error as one line on
stderr with exit 2 (bad files and options are user errors, not tracebacks). Used by ``mmllm`` and by
the tasks' ``evaluate.py`` and ``main.py`` scripts; knows nothing of tasks or training."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from .errors import MMLLMError


def run_cli(main: Callable[[], Any]) -> int:
    """Run a command: the project's own errors become one line on stderr and exit 2, not a traceback;
    Ctrl-C says where the run can resume from and exits 130 (128 + SIGINT, as a shell reports it)."""
    try:
        main()
    except MMLLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C: where the run can resume from (trainer.RunInterrupted), exit 130
        print(str(exc) or "interrupted", file=sys.stderr)
        return 130
    return 0


def print_report(compute: Callable[[], Any]) -> int:
    """Run an evaluation script's ``compute()``: its JSON report on stdout (exit 0), or the
    input error on stderr (exit 2) — bad files are user errors, not tracebacks."""
    try:
        report = compute()
    except (MMLLMError, KeyError, OSError) as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)  # one line, even for multi-line messages
        return 2
    try:
        text = json.dumps(report, indent=1, allow_nan=False)  # NaN/Infinity are not JSON, and not a result
    except ValueError as exc:
        print(f"error: the report holds a non-finite number ({exc})", file=sys.stderr)
        return 2
    print(text)
    return 0
