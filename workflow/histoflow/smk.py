"""Glue for the scripts Snakemake runs: logging into the rule's log file, then the stage call."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any


def run_logged(snakemake: Any, fn: Callable[[], Any]) -> Any:
    """Send stdout, stderr, ``logging`` and tqdm to the rule's ``log:`` file and call ``fn()``.

    Exceptions are logged with their traceback (so the log says why a job failed) and re-raised so
    Snakemake marks the job failed and removes its outputs.
    """
    log_path = snakemake.log[0] if len(snakemake.log) else None
    stream = open(log_path, "w", buffering=1) if log_path else sys.stderr  # noqa: SIM115
    sys.stdout = sys.stderr = stream
    logging.basicConfig(level=logging.INFO, stream=stream, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        torch_threads(snakemake.threads)
        return fn()
    except Exception:
        logging.getLogger("histoflow").exception("job failed")
        raise
    finally:
        stream.flush()


def torch_threads(n: int) -> None:
    """Give torch the job's ``threads:`` without importing it.

    Most rules never use torch, and its import costs seconds and hundreds of MB. Already imported, it is told
    directly; otherwise ``OMP_NUM_THREADS`` (which Snakemake already sets to the job's threads) sizes its
    thread pool when a stage imports it.
    """
    n = max(int(n or 1), 1)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    else:
        os.environ.setdefault("OMP_NUM_THREADS", str(n))


def one_of(names: list[str]) -> str:
    """A wildcard constraint matching exactly one of ``names``.

    Each name is escaped (a model ``unet+aug`` or ``unet(v2)`` is a literal name, not a pattern) and longer
    names come first, so a name that is a prefix of another never cuts it short; with no names, a pattern
    that matches nothing.
    """
    import re

    if not names:
        return "^$"
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
