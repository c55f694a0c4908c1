"""First-run set-up for `python3 benchmarks/run.py` on a fresh machine.

The benchmark needs uringloop built from this checkout, uvloop, aiohttp and matplotlib, gcc for the
load generator, OpenSSL's headers for its TLS build, and wrk for the HTTP workload.  When the
running interpreter lacks the Python packages, this creates benchmarks/.venv with the same
interpreter, installs this checkout's `.[bench]` extra into it (building the extension), and
re-executes run.py inside it; later runs reuse the venv.  When wrk or OpenSSL's headers are
missing and we are root on a Debian-like system, they are installed with apt-get; otherwise the
benchmark says how to install them and skips the HTTP workload or the TLS points.

It never touches the running interpreter's own site-packages.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV = HERE / ".venv"
# matplotlib is optional (without it the report has no plots and says so), so an environment
# that already has the loops -- a developer's, or tox's -- is used as it is.
REQUIRED = ("uringloop", "uvloop", "aiohttp")
# Set in the re-executed child so that a broken install cannot loop forever.
GUARD = "URINGLOOP_BENCH_BOOTSTRAPPED"


def _missing() -> list:
    missing = []
    for name in REQUIRED:
        try:
            if importlib.util.find_spec(name) is None:
                missing.append(name)
        except (ImportError, ValueError):
            missing.append(name)
    return missing


def _say(msg: str) -> None:
    print(f"[bootstrap] {msg}", file=sys.stderr, flush=True)


def _install_debian_packages() -> None:
    """wrk (the HTTP workload) and OpenSSL's headers (the TLS load generator), when missing."""
    missing = []
    if not shutil.which("wrk"):
        missing.append("wrk")
    if not Path("/usr/include/openssl/ssl.h").exists():
        missing.append("libssl-dev")
    if not missing or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return
    _say(f"installing the missing Debian packages: apt-get install {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], env=env, check=False)


def ensure_environment(argv: list) -> None:
    """Return when everything is importable here; otherwise re-exec inside benchmarks/.venv."""
    _install_debian_packages()
    missing = _missing()
    if not missing:
        return
    if os.environ.get(GUARD):
        raise SystemExit(f"benchmark set-up failed: still missing {', '.join(missing)} in "
                         f"{sys.executable}")
    python = VENV / "bin" / "python"
    if not python.exists():
        _say(f"missing {', '.join(missing)}: creating {VENV.relative_to(ROOT)}")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    _say("installing this checkout's uringloop with the [bench] extra (builds the extension)")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    f"{ROOT}[bench]"], check=True)
    env = dict(os.environ, **{GUARD: "1"})
    # The venv's uringloop must win over the checkout's source directory.
    env.pop("PYTHONPATH", None)
    os.execve(str(python), [str(python), str(HERE / "run.py"), *argv], env)
