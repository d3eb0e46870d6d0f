"""Shared command-line plumbing: user errors print one clear line and exit non-zero."""
from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import TextIO

from runtime.defaults import DEFAULT_BACKEND
from runtime.devices import BACKENDS, DEVICE_HELP, PROVIDERS
from runtime.errors import DiadError, DiadWarning


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """``--backend``, ``--device`` and ``--provider`` (:mod:`runtime.devices`), alike in every command."""
    parser.add_argument("--backend", choices=BACKENDS, default=DEFAULT_BACKEND,
                        help=f"{DEFAULT_BACKEND} (default) or tensorrt: native TensorRT engines "
                        "(python -m export.tensorrt)")
    parser.add_argument("--device", help=f"{DEVICE_HELP} (default cpu for onnxruntime, cuda:0 for tensorrt)")
    parser.add_argument("--provider", choices=PROVIDERS,
                        help="onnxruntime's execution provider: cpu, cuda or tensorrt (ONNX Runtime's TensorRT "
                        "provider; default the device's own)")


def _show_warning(default: Callable[..., None]) -> Callable[..., None]:
    """``warnings.showwarning`` that prints a :class:`DiadWarning` as one ``warning: ...`` line on stderr."""

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: TextIO | None = None,
             line: str | None = None) -> None:
        if issubclass(category, DiadWarning):
            print(f"warning: {message}", file=file or sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    return show


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Run ``main(argv)``; a :class:`DiadError` becomes ``error: ...`` on stderr and exit status 2, a
    :class:`DiadWarning` a ``warning: ...`` line."""
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning(warnings.showwarning)
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
