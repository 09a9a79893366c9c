"""``unioncam`` command line: ``unioncam explain``, ``unioncam export``."""
from __future__ import annotations

import argparse
import sys
import warnings

from ..errors import UnionCAMError, UsageError
from ..settings import resolve_options


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so that every ``finally`` runs (a Ray cluster is shut
    down, temporary files are removed) as for Ctrl-C; the CLI exits 143."""


def on_sigterm(signum, frame):
    raise Terminated()


def _plain_warning(message, category, filename, lineno, file=None, line=None):
    print(f"unioncam: warning: {message}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    from . import bench, explain
    from . import eval as eval_cmd
    from . import export as export_cmd
    from . import serve

    parser = argparse.ArgumentParser(prog="unioncam", description="UnionCAM explanations for CNN and vision-transformer classifiers.")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    parser.add_argument("--verbose", action="store_true",
                        help="also show third-party libraries' own messages (image codecs, Ray's core worker)")
    sub = parser.add_subparsers(dest="command", required=True)
    explain.add_parser(sub)
    eval_cmd.add_parser(sub)
    bench.add_parser(sub)
    export_cmd.add_parser(sub)
    serve.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (0 ok, 1 error, 2 usage, 130 interrupted, 143 terminated)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    resolve_options(args)
    warnings.showwarning = _plain_warning
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)
    from ..verbosity import set_verbose

    set_verbose(args.verbose)
    for stream in (sys.stdout, sys.stderr):
        # A file name that is not valid UTF-8 (or a strict ASCII terminal) prints escaped, never raises.
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):
            pass
    from ..ownership import writing_as

    try:
        with writing_as(args.command):  # each command replaces only its own outputs
            return int(args.func(args) or 0)
    except UnionCAMError as e:
        if args.debug:
            raise
        print(f"unioncam: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1
    except KeyboardInterrupt as e:
        terminated = isinstance(e, Terminated)
        print(f"unioncam: {'terminated' if terminated else 'interrupted'}; the same command resumes the run",
              file=sys.stderr)
        return 143 if terminated else 130
    except Exception as e:  # never a bare traceback for users; --debug shows it
        if args.debug:
            raise
        print(f"unioncam: error: unexpected {type(e).__name__}: {e} (rerun with --debug for a traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
