"""What the example tests share: running an example as its own process, the way a user would,
and reading what it prints.  (No tests here.)"""

import contextlib
import ctypes
import os
import pathlib
import queue
import re
import resource
import signal
import subprocess
import sys
import threading
import time


from helpers import child_env

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
# The examples must run against the uringloop these tests imported (the in-place build of this
# checkout, or an installed one).
def example_env() -> dict:
    return child_env(PYTHONUNBUFFERED="1")


def example_command(name: str, *args) -> list:
    return [sys.executable, str(EXAMPLES / f"{name}.py"), *map(str, args)]


def run_example(name: str, *args, timeout: float = 120, unprivileged: bool = False):
    """Run an example to completion; returns the CompletedProcess (text output)."""
    return subprocess.run(example_command(name, *args), env=example_env(), capture_output=True,
                          text=True, timeout=timeout,
                          preexec_fn=drop_dac_capabilities if unprivileged else None)


class ExampleProcess:
    """A long-running example (a server): started in the background, its stdout read line by
    line, stopped with SIGINT (Ctrl-C) like a user would, killed if it does not stop in time."""

    def __init__(self, name: str, *args):
        self.proc = subprocess.Popen(example_command(name, *args), env=example_env(),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: "queue.Queue[str | None]" = queue.Queue()
        self.output: list = []
        self._stderr: list = []
        self._readers = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            self._stderr.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def expect(self, pattern: str, timeout: float = 20) -> "re.Match":
        """Wait for a line of output matching `pattern` (a regex searched in each line)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no output matching {pattern!r} within {timeout} s; "
                                     f"got {self.output!r}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self.proc.wait(5)
                self._readers[1].join(5)
                raise AssertionError(f"the example exited ({self.proc.returncode}) before "
                                     f"printing {pattern!r}; output {self.output!r}, stderr "
                                     f"{self.stderr!r}")
            self.output.append(line)
            match = re.search(pattern, line)
            if match:
                return match

    def seen(self, pattern: str) -> "re.Match | None":
        """Without waiting: a line printed so far that matches `pattern`, or None."""
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self.lines.put(None)
                break
            self.output.append(line)
        for line in self.output:
            match = re.search(pattern, line)
            if match:
                return match
        return None

    def stop(self, timeout: float = 20) -> int:
        """Ctrl-C, wait for the exit; returns the exit status.  The rest of stdout is read into
        self.output; self.stderr has all of stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the example did not stop within {timeout} s of SIGINT")
        finally:
            for reader in self._readers:
                reader.join(5)
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.output.append(line)
        return self.proc.returncode

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for reader in self._readers:
            reader.join(5)
        self.proc.stdout.close()
        self.proc.stderr.close()


@contextlib.contextmanager
def nofile_limit(wanted: int):
    """Raise this process's RLIMIT_NOFILE soft limit to `wanted` (at most the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, target), hard))
    try:
        yield max(soft, target)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


_libc = ctypes.CDLL(None, use_errno=True)


def drop_dac_capabilities() -> None:
    """preexec_fn: make file permissions apply to the child even when the tests run as root.

    Dropping CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set before exec leaves
    the exec'd program without them; it is still uid 0, the owner of the test's files, so the
    owner's mode bits decide, as they would for any user."""
    if os.geteuid() == 0:
        for cap in (1, 2):                       # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            if _libc.prctl(24, cap, 0, 0, 0) != 0:   # PR_CAPBSET_DROP
                os._exit(126)
