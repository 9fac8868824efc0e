"""The `lofi` command line.

Each module in ``harness/commands`` adds one command group through ``register(subparsers)``; this file only
discovers them, sets up logging and turns every error the user can cause (``LofiError``, and the ``OSError``s, malformed
files and store errors that ``harness.errors.user_message`` recognises) into one-line messages with exit status 2.
Any other exception is a bug: it keeps its traceback. ``-vv`` logs the traceback of a mapped error too.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import pkgutil
import sys
from collections.abc import Sequence

from harness import __version__
from harness.errors import user_message

EPILOG = """\
typical use:
  lofi data synth --profile smoke --seed 0 --out data/smoke     make the built-in synthetic benchmark
  lofi data stats --annotations data/smoke/annotations.json     count videos, instances, classes
  lofi run --config config/smoke.yaml --mode lofi-long --seed 0 --out runs/x
                                                                 pre-train -> LoFi -> features -> head -> metrics
  lofi evaluate detection --ground-truth GT.json --predictions P.json
  snakemake --cores 8 results/table_ablation.md                   the whole ablation sweep (see README)

Every command has its own --help.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lofi",
        description="Low-fidelity end-to-end training for temporal action localization: data, training stages, "
        "evaluation and reports.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"lofi-bench {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    import harness.commands as commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"harness.commands.{info.name}")
        module.register(sub)
    return parser


def cpu_seconds() -> tuple[float, float]:
    """(user, system) CPU seconds of this process and of the children it has waited for (loader workers, encoders
    run in subprocesses): the kernel's own accounting, exact where Snakemake's sampled ``cpu_time`` is not."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + kids.ru_utime, own.ru_stime + kids.ru_stime


# benchmarks/job_cost.py reads this line from each workflow job's log (docs/synthetic.md § Cost)
CPU_LINE = "cpu %.2f s (user %.2f, system %.2f; this process and the children it waited for)"


def main(argv: Sequence[str] | None = None) -> int:
    code = _main(argv)
    if code == 0:  # a failed command's one-line error stays the only line
        user, system = cpu_seconds()
        logging.getLogger("harness.cli").info(CPU_LINE, user + system, user, system)
    return code


def _main(argv: Sequence[str] | None) -> int:
    from harness import malloc

    malloc.tune()  # freed tensor buffers reused, not unmapped and faulted in again (same numbers, less CPU)
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING if args.quiet else (logging.DEBUG if args.verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("lofi: interrupted; finished outputs are kept, re-run the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `lofi ... | head`: the reader left; nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when exit flushes stdout
        return 141
    except Exception as exc:
        message = user_message(exc)
        if message is None:
            raise  # a bug, not the input: keep the traceback
        logging.getLogger("harness.cli").debug("traceback of the error below", exc_info=True)
        clear = "\r\033[K" if sys.stderr.isatty() else ""  # a progress bar the error interrupted
        print(f"{clear}lofi: error: {message}", file=sys.stderr)
        return 2


def entry() -> None:
    """The `lofi` console script and `python -m harness.cli`: ``main``, then an exit without the interpreter's
    teardown. Freeing every module and tensor one by one costs ~1.4 CPU-s per process (a smoke head run: 8.0 →
    6.7 CPU-s) and writes nothing: outputs are written atomically and closed by then. What a normal exit does
    that matters is done first: non-daemon threads joined, exit handlers run (MLflow's, logging's flush), stdio
    flushed. A bug's traceback (an exception out of ``main``) and argparse's exits keep the normal path."""
    import atexit
    import threading

    code = main()
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing left to say
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
