"""User-facing errors: one clear message, exit code 2, no traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable


class UserError(Exception):
    """A problem in the user's config, data or environment that they can fix."""

    exit_code = 2


class ConfigError(UserError):
    """One or more problems in the config, each as `key.path: what is wrong`."""

    def __init__(self, problems: list[str], source: str):
        self.problems = problems
        self.source = source
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"config error ({source}):\n{lines}")


class DataError(UserError):
    """A bad data file or row, named by file and line."""


def exit_on_user_error(main: Callable[..., int | None]) -> Callable[..., int | None]:
    """Run `main`; a UserError prints its message to stderr and exits with its code (2); Ctrl-C before training
    exits with 130 and no traceback."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(err.exit_code)
        except KeyboardInterrupt:
            print("\ninterrupted before training started; nothing to resume from this run", file=sys.stderr)
            sys.exit(130)

    return wrapper
