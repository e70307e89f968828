"""One error type for bad evaluation inputs, so the CLI can show it as a clean message instead of a traceback."""

from __future__ import annotations

import click


class EvalInputError(click.ClickException):
    """A missing or malformed input (image, annotation file, question file, model). The message names the problem
    and what was expected; it is a ``click.ClickException`` so the CLI prints it and exits with status 1."""
