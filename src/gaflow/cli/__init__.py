"""The ``gaflow`` command line. Each job lives in its own module here and registers itself on ``app``:
load config → build pieces → loop with a progress bar → write artefacts to one run folder."""

from __future__ import annotations

import linecache
import os
import re
import sys
from pathlib import Path

import typer
from typer.core import TyperGroup

DEBUG_ENV = "GAFLOW_DEBUG"
_PACKAGE = Path(__file__).resolve().parent.parent  # src/gaflow
_CLI = Path(__file__).resolve().parent

# User mistakes the library reports by raising. (module, class) pairs, looked up in sys.modules when an error
# happens: a class whose module was never imported cannot have raised, and the CLI need not import torch to know.
REFUSED = {  # exit 1: a well-formed command that gaflow refuses to run
    ("gaflow.evaluation.splits", "SplitViolation"),
    ("gaflow.evaluation.ledger", "TestReread"),
    ("gaflow.envs.render", "HeadlessRenderError"),
}
BAD_INPUT = {  # exit 2, like click's usage errors: an option value, name, path or file that cannot be used
    ("gaflow.policies.compact.modeling", "CheckpointError"),
    ("gaflow.policies.lerobot.offline", "CheckpointError"),
}
_REMOTE_FRAME = re.compile(r'File "([^"]+)", line (\d+)')


def _loaded(pairs: set[tuple[str, str]]) -> tuple[type, ...]:
    return tuple(c for m, n in pairs if isinstance(c := getattr(sys.modules.get(m), n, None), type))


def _frames(exc: BaseException) -> list[tuple[Path, int]]:
    """(file, line) of each frame from the outermost to where ``exc`` was raised; for an exception re-raised from
    a worker process, the worker's frames (concurrent.futures keeps them as text in ``__cause__``)."""
    cause = exc.__cause__
    if type(cause).__name__ == "_RemoteTraceback":
        return [(Path(f).resolve(), int(n)) for f, n in _REMOTE_FRAME.findall(str(cause))]
    frames, tb = [], exc.__traceback__
    while tb is not None:
        frames.append((Path(tb.tb_frame.f_code.co_filename).resolve(), tb.tb_lineno))
        tb = tb.tb_next
    return frames


def _deliberate(exc: BaseException) -> bool:
    """``exc`` reports bad input rather than a bug: gaflow raised it with a ``raise`` statement, or a CLI module
    (which only parses and wires options) got a ValueError parsing what the user typed (``int("x")``,
    ``json.loads``). An implicit ValueError/KeyError inside the library (a failed unpacking, a missing dict key)
    is a bug."""
    frames = _frames(exc)
    ours = [f for f in frames if _PACKAGE in f[0].parents]
    if not ours:
        return False
    path, line = ours[-1]
    if _CLI in path.parents:
        return isinstance(exc, ValueError)  # int("x"), float(...), json.loads on what the user typed
    return ours[-1] == frames[-1] and linecache.getline(str(path), line).lstrip().startswith("raise")


def user_error_exit_code(exc: BaseException) -> int | None:
    """The exit code for an exception that reports a user mistake (2: bad input, 1: refused); None for a bug."""
    if isinstance(exc, _loaded(REFUSED)):
        return 1
    if isinstance(exc, _loaded(BAD_INPUT) + (FileNotFoundError, FileExistsError, NotADirectoryError)):
        return 2  # their messages name the path
    if isinstance(exc, (ValueError, KeyError)) and _deliberate(exc):
        return 2
    return None


def user_error_message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.strerror}: {exc.filename}"
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        return exc.args[0]  # str(KeyError("x")) is "'x'"
    return str(exc) or type(exc).__name__


class GaflowGroup(TyperGroup):
    """Every command runs through :meth:`invoke`: a user mistake ends as one line ``error: <message>`` on stderr
    with exit code 2 (bad input) or 1 (refused); anything else — a bug — keeps its traceback. ``GAFLOW_DEBUG=1``
    shows the traceback of user mistakes too."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Exception as exc:
            code = user_error_exit_code(exc)
            if code is None or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
                raise
            typer.echo(f"{typer.style('error:', fg='red', bold=True)} {user_error_message(exc)}", err=True)
            raise typer.Exit(code) from None


app = typer.Typer(
    name="gaflow",
    cls=GaflowGroup,
    help="Guided Action Flow: steer a frozen flow-matching robot policy with a learned action-chunk critic.",
    epilog=f"A mistake in the input ends in one 'error:' line (exit 2; 1 when refused); {DEBUG_ENV}=1 shows its "
           "traceback.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def read_json_file(path, option: str):
    """A JSON file given on the command line; bad JSON is a user error naming the option and the file (a missing
    file is reported as such by the CLI's error handler)."""
    import json

    text = path.read_text()
    try:
        return json.loads(text)
    except ValueError as e:
        raise ValueError(f"{option} {path} is not valid JSON: {e}") from None


def comma_list(text: str | None) -> list[str]:
    """``"push, pick-place,"`` → ``["push", "pick-place"]``: a comma-separated option, blanks dropped."""
    return [t.strip() for t in (text or "").split(",") if t.strip()]


# --backend / --ray-address, shared by every command that runs episodes (collect, eval, sweep, eval-policy, demo)
BACKEND_HELP = "where episode jobs run: local (worker processes here) | ray (Ray tasks; docs/scale.md)"
RAY_ADDRESS_HELP = ("with --backend ray: 'auto' or '<head-host>:6379' joins a running Ray cluster (every free CPU "
                    "takes jobs); default: start a local Ray instance with --workers CPUs")


@app.callback()
def main() -> None:
    """gaflow: test-time Q-guidance for frozen flow-matching robot policies."""


def _register() -> None:
    # Importing a command module registers its commands on `app`.
    from gaflow.cli import (  # noqa: F401
        collect,
        critic,
        demo,
        demos,  # noqa: F401
        evaluate,
        import_rollouts,  # noqa: F401
        libero,  # noqa: F401
        serve,  # noqa: F401
        train_policy,  # noqa: F401
    )


_register()

__all__ = [
    "BACKEND_HELP",
    "DEBUG_ENV",
    "GaflowGroup",
    "RAY_ADDRESS_HELP",
    "app",
    "comma_list",
    "read_json_file",
    "user_error_exit_code",
    "user_error_message",
]
