"""Python ``logging`` for mmllm: one handler on stderr, rank-0 aware, third-party noise turned down.

Every module logs through ``logging.getLogger(__name__)`` (all under the ``mmllm`` logger);
:func:`setup_logging` (called by the command-line entry points, ``--log-level``) decides what
is shown. Results that scripts print (JSON on stdout) stay ``print``: they are output, not logs.

Rank awareness: under a multi-process launcher only rank 0 shows INFO; the other ranks show
warnings and errors, so a 2-process run does not print every line twice.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

LEVELS = ("debug", "info", "warning", "error")
ROOT_LOGGER = "mmllm"
# loggers of libraries whose INFO chatter (load reports, launcher banners) hides our own lines
NOISY = (
    "transformers",
    "deepspeed",
    "DeepSpeed",
    "datasets",
    "torch.distributed",
    "torch.utils.cpp_extension",
    "huggingface_hub",
    "timm",
    "urllib3",
    "PIL",
    "matplotlib",
)
_HANDLER_NAME = "mmllm-stderr"


def _rank() -> int:
    """This process's rank as the launchers set it (before torch.distributed exists)."""
    for key in ("RANK", "LOCAL_RANK"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (not the stream it was made with), so a
    command run in-process under a capturing harness, or after stderr is replaced, never writes to a
    closed stream."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property always wins
        pass


def reset_logging() -> None:
    """Undo :func:`setup_logging` (our handler removed, records propagate again): for embedding code and tests."""
    logger = logging.getLogger(ROOT_LOGGER)
    for handler in [h for h in logger.handlers if h.get_name() == _HANDLER_NAME]:
        logger.removeHandler(handler)
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


def setup_logging(level: str | int = "info", rank: int | None = None) -> logging.Logger:
    """Configure the ``mmllm`` logger (idempotent) and quiet the libraries in :data:`NOISY`.

    ``level`` is a name from :data:`LEVELS` or a ``logging`` constant; ranks other than 0 log at
    WARNING or above whatever ``level`` says. Third-party loggers are set to ERROR unless
    ``level`` is debug (then they keep their own defaults, for diagnosing them).
    """
    if isinstance(level, str):
        if level.lower() not in LEVELS:
            from .errors import ConfigError

            raise ConfigError(f"--log-level {level!r}: choose one of {LEVELS}")
        level = getattr(logging, level.upper())
    rank = _rank() if rank is None else rank
    if rank != 0:
        level = max(level, logging.WARNING)
    logger = logging.getLogger(ROOT_LOGGER)
    logger.setLevel(level)
    logger.propagate = False
    if not any(h.get_name() == _HANDLER_NAME for h in logger.handlers):
        handler = _StderrHandler()
        handler.set_name(_HANDLER_NAME)
        prefix = f"[rank {rank}] " if rank else ""
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    quiet_third_party(verbose=int(level) <= logging.DEBUG)
    return logger


def quiet_third_party(verbose: bool = False) -> None:
    """Turn the libraries' INFO/WARNING chatter down to errors (``verbose`` leaves them alone)."""
    if verbose:
        return
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:  # transformers keeps its own verbosity (the BERT/encoder load report is a warning there)
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()  # the per-model "Loading weights" bar
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    warnings.filterwarnings("ignore", category=FutureWarning, module="timm")


def add_log_level_flag(parser, default: str | None = "info") -> None:
    """``--log-level`` on an argparse parser (the same flag on every mmllm command); on sub-commands
    pass ``default=argparse.SUPPRESS`` so ``mmllm --log-level debug train`` and
    ``mmllm train --log-level debug`` both work."""
    parser.add_argument(
        "--log-level",
        default=default,
        choices=LEVELS,
        help="what mmllm logs on stderr (rank 0; other ranks show warnings only); "
        "debug also lets third-party libraries speak",
    )
