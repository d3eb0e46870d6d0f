"""The ``tritonserver`` binary of ``nvidia-pytriton`` and the environment its Python backend runs our model in.

Triton's Python backend runs each model instance in a *stub* process that embeds CPython: the stub for this
interpreter's ``major.minor`` links ``libpython3.X.so.1.0``, and must load *this* interpreter's shared library
(from ``sysconfig``'s ``LIBDIR``), else it pairs another build's library with this standard library and fails (a
Debian ``libpython3.11.so`` with pyenv's 3.11.7 standard library: ``'_thread.RLock' object has no attribute
'_recursion_count'``). So the server is started with ``LD_LIBRARY_PATH`` led by that directory, and an
interpreter built without a shared library is refused before Triton starts (:func:`check_interpreter`).
"""
from __future__ import annotations

import importlib.util
import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import ServerError

INSTALL_HINT = ('install the serving extra and the server: pip install -e ".[serve]" && pip install --no-deps '
                'nvidia-pytriton==0.7.0 (make venv does both)')


@dataclass(frozen=True)
class TritonInstall:
    """Where ``nvidia-pytriton`` keeps Triton: the server binary, the Python backend, the stubs, the libraries."""

    root: Path  # .../pytriton/tritonserver
    libs: Path  # .../nvidia_pytriton.libs

    @property
    def server(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def python_backend(self) -> Path:
        return self.root / "backends" / "python"

    def stub(self, version: str) -> Path:
        return self.root / "python_backend_stubs" / version / "triton_python_backend_stub"


def find_triton() -> TritonInstall:
    """The Triton that ``nvidia-pytriton`` installed; :class:`ServerError` saying how to install it."""
    spec = importlib.util.find_spec("pytriton")  # found, not imported: only its files are needed
    if spec is None or not spec.origin:
        raise ServerError(f"no Triton Inference Server here: {INSTALL_HINT}")
    package = Path(spec.origin).parent
    install = TritonInstall(package / "tritonserver", package.parent / "nvidia_pytriton.libs")
    if not install.server.is_file():
        raise ServerError(f"{install.server}: missing from the nvidia-pytriton package; reinstall it ({INSTALL_HINT})")
    return install


def python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def shared_libpython() -> Path | None:
    """This interpreter's shared library (``libpython3.X.so.1.0``), or None when it was built without one."""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return None
    name, libdir = sysconfig.get_config_var("INSTSONAME"), sysconfig.get_config_var("LIBDIR")
    if not name or not libdir:
        return None
    path = Path(libdir) / name
    return path if path.is_file() else None


def check_interpreter(install: TritonInstall) -> Path:
    """The shared libpython that the stub will load; :class:`ServerError` saying what to do when this interpreter
    cannot be embedded by Triton's Python backend."""
    version = python_version()
    if not install.stub(version).is_file():
        found = sorted(p.name for p in (install.root / "python_backend_stubs").iterdir())
        raise ServerError(
            f"Python {version} ({sys.executable}): nvidia-pytriton ships Python backend stubs for {', '.join(found)} "
            "only; build the serving environment with one of those"
        )
    library = shared_libpython()
    if library is None:
        raise ServerError(
            f"{sys.executable} (Python {sys.version.split()[0]}) has no shared libpython "
            f"(sysconfig Py_ENABLE_SHARED={sysconfig.get_config_var('Py_ENABLE_SHARED')}); Triton's Python backend "
            "embeds the interpreter from that library. Make the serving venv with an interpreter built with "
            "--enable-shared: Debian's /usr/bin/python3, or pyenv with PYTHON_CONFIGURE_OPTS=--enable-shared "
            "(check: python3 -c \"import sysconfig; print(sysconfig.get_config_var('Py_ENABLE_SHARED'))\" prints 1)"
        )
    return library


def python_paths() -> list[str]:
    """What the stub's embedded interpreter must import from: the folder holding the ``runtime`` package (an
    editable install's source tree), then this process's import path less the standard library (site-packages
    and what their ``.pth`` files add: numpy, OpenCV, ONNX Runtime)."""
    import runtime

    base = {"base": sys.base_prefix, "installed_base": sys.base_prefix, "platbase": sys.base_exec_prefix,
            "installed_platbase": sys.base_exec_prefix}  # a venv's platstdlib would be the venv's own lib/
    stdlib = {os.path.realpath(sysconfig.get_path(key, vars=base)) for key in ("stdlib", "platstdlib")}
    own = [p for p in sys.path if p and os.path.isdir(p) and os.path.realpath(p) not in stdlib
           and os.path.realpath(os.path.dirname(p)) not in stdlib]  # lib-dynload lies in the standard library
    return list(dict.fromkeys([str(Path(runtime.__file__).resolve().parent.parent), *own]))


def server_environment(install: TritonInstall, library: Path) -> dict[str, str]:
    """The environment of the ``tritonserver`` process: this interpreter's libpython first on the library path,
    then Triton's own libraries. (The stub ignores ``PYTHONPATH``: the model's ``model.py`` sets the import path,
    :func:`runtime.serving.repository.write_repository`.)"""
    env = dict(os.environ)
    libraries = [str(library.parent), str(install.libs), env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = ":".join(p for p in libraries if p)
    return env


def backend_directory(install: TritonInstall, root: Path) -> Path:
    """A Triton backend directory under ``root`` whose ``python`` backend is pytriton's with the stub for this
    interpreter (the backend looks for its stub beside itself)."""
    folder = root / "backends" / "python"
    folder.mkdir(parents=True, exist_ok=True)
    links = {
        "libtriton_python.so": install.python_backend / "libtriton_python.so",
        "triton_python_backend_utils.py": install.python_backend / "triton_python_backend_utils.py",
        "triton_python_backend_stub": install.stub(python_version()),
    }
    for name, target in links.items():
        link = folder / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    return root / "backends"
