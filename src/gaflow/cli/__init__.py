"""The ``gaflow`` command line. Each job lives in its own module here and registers itself on ``app``:
load config → build pieces → loop with a progress bar → write artefacts to one run folder."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="gaflow",
    help="Guided Action Flow: steer a frozen flow-matching robot policy with a learned action-chunk critic.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


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
        libero,  # noqa: F401
        train_policy,  # noqa: F401
    )


_register()

__all__ = ["BACKEND_HELP", "RAY_ADDRESS_HELP", "app", "comma_list"]
