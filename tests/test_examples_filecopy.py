"""examples/filecopy.py, run as a user would: `python examples/filecopy.py SOURCE DEST`."""

import hashlib
import os
import re
import signal
import stat
import subprocess
import time

import pytest

from test_examples_helpers import example_command, example_env, run_example

MiB = 1024 * 1024


def _write_random(path, size) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            block = os.urandom(MiB)
            digest.update(block)
            f.write(block)
    return digest.hexdigest()


def _sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * MiB):
            digest.update(block)
    return digest.hexdigest()


def test_copies_256_mib_with_requests_overlapped(tmp_path):
    source, dest = tmp_path / "source.bin", tmp_path / "copy.bin"
    expected = _write_random(source, 256 * MiB)
    source.chmod(0o640)
    proc = run_example("filecopy", source, dest)
    assert proc.returncode == 0, proc.stderr
    match = re.fullmatch(r"copied 268,435,456 bytes in [\d.]+ s \(\d+ MiB/s\), 1 MiB per "
                         r"request, up to (\d+) requests in flight\n", proc.stdout)
    assert match, proc.stdout
    assert 2 <= int(match.group(1)) <= 8        # several in the kernel at once, never more
    assert _sha256(dest) == expected
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.bin", "source.bin"]


def test_replaces_an_existing_destination_and_copies_small_files(tmp_path):
    source, dest = tmp_path / "source", tmp_path / "dest"
    source.write_bytes(b"new contents\n" * 1000 + b"tail")   # not a multiple of the chunk
    dest.write_bytes(b"old contents, much longer " * 10000)
    dest.chmod(0o600)
    proc = run_example("filecopy", source, dest, "--chunk", "4K", "--depth", "3", "--fsync")
    assert proc.returncode == 0, proc.stderr
    assert "4 KiB per request" in proc.stdout
    assert dest.read_bytes() == source.read_bytes()
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600         # the destination keeps its mode
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    proc = run_example("filecopy", empty, tmp_path / "empty-copy")
    assert proc.returncode == 0 and proc.stdout.startswith("copied 0 bytes"), proc
    assert (tmp_path / "empty-copy").read_bytes() == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "empty", "empty-copy",
                                                           "source"]


def _expect_failure(proc, exc_name, path):
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    assert re.fullmatch(rf"filecopy: {exc_name}: \[Errno \d+\] .+: '{re.escape(str(path))}'\n",
                        proc.stderr), proc.stderr


def test_bad_input_gives_the_usual_errors_and_leaves_no_destination(tmp_path):
    source = tmp_path / "source"
    source.write_bytes(b"data" * 1000)
    missing = tmp_path / "missing"
    _expect_failure(run_example("filecopy", missing, tmp_path / "d1"), "FileNotFoundError",
                    missing)
    a_dir = tmp_path / "a-dir"
    a_dir.mkdir()
    _expect_failure(run_example("filecopy", a_dir, tmp_path / "d2"), "IsADirectoryError", a_dir)
    _expect_failure(run_example("filecopy", source, a_dir), "IsADirectoryError", a_dir)
    assert list(a_dir.iterdir()) == []
    nowhere = tmp_path / "no-such-dir" / "d3"
    _expect_failure(run_example("filecopy", source, nowhere), "FileNotFoundError", nowhere)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-dir", "source"]


def test_read_only_destinations_give_permission_error_and_stay_untouched(tmp_path):
    # Run without the privileges that let root write anything (see drop_dac_capabilities).
    source = tmp_path / "source"
    source.write_bytes(b"data" * 1000)
    read_only = tmp_path / "read-only"
    read_only.write_bytes(b"precious")
    read_only.chmod(0o444)
    proc = run_example("filecopy", source, read_only, unprivileged=True)
    _expect_failure(proc, "PermissionError", read_only)
    assert read_only.read_bytes() == b"precious"
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    proc = run_example("filecopy", source, locked / "dest", unprivileged=True)
    _expect_failure(proc, "PermissionError", locked / "dest")
    assert list(locked.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["locked", "read-only", "source"]


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_interrupted_copy_leaves_nothing_behind(tmp_path, how):
    """A copy stopped half-way -- killed outright, or Ctrl-C -- leaves no destination and no
    temporary file: the bytes written so far went to an unnamed file.  The source is a FIFO so
    that the copier is provably mid-copy: it has consumed (and written) what we fed it and is
    waiting for more."""
    fifo, dest = tmp_path / "fifo", tmp_path / "dest"
    os.mkfifo(fifo)
    proc = subprocess.Popen(example_command("filecopy", fifo, dest), env=example_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        writer = _open_fifo_writer(fifo, proc)
        with os.fdopen(writer, "wb") as w:
            w.write(os.urandom(4 * MiB))     # returns once the copier has read nearly all of it
            w.flush()
            time.sleep(0.2)
            proc.send_signal(getattr(signal, how))
            stdout, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    if how == "SIGKILL":
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 130, stderr
        assert stderr == "filecopy: interrupted\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo"]


def _open_fifo_writer(fifo, proc, timeout=20.0) -> int:
    # O_NONBLOCK: ENXIO until the copier has the FIFO open for reading (bounded wait).
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the copier never opened the FIFO: {proc.communicate()}")
            time.sleep(0.01)
            continue
        os.set_blocking(fd, True)
        return fd


def test_compare_times_shutil_and_cp(tmp_path):
    source, dest = tmp_path / "source", tmp_path / "dest"
    _write_random(source, 4 * MiB)
    proc = run_example("filecopy", source, dest, "--compare")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("4,194,304 bytes, page cache warm")
    assert [line.split()[0] for line in lines[1:]] == ["uringloop.files", "shutil.copyfile", "cp"]
    assert all(re.search(r" [\d.]+ s +\d+ MiB/s$", line) for line in lines[1:])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source"]
