"""Shared command-line plumbing: user errors print one clear line and exit non-zero."""
from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from runtime.errors import DiadError


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Run ``main(argv)``; a :class:`DiadError` becomes ``error: ...`` on stderr and exit status 2."""
    try:
        status = main(argv)
    except DiadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except BrokenPipeError:  # output piped into `head` and closed early
        sys.stderr.close()
        raise SystemExit(0) from None
    raise SystemExit(status or 0)
