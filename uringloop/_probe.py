"""What the running kernel's io_uring offers, and why it is refused when it is.

`probe()` builds a `ProbeReport` by actually creating a ring (the only reliable test: headers,
version numbers and sysctls all lie in containers), asking the kernel which opcodes it has
(IORING_REGISTER_PROBE), and registering a provided-buffer ring.  Flags that cannot be probed
without side effects (multishot recv, incremental buffers) are decided from the kernel version
in which they were merged; the report says which is which.

When io_uring_setup fails, `diagnose()` turns the errno plus what /proc says into a cause and a
fix, because "Operation not permitted" alone sends people searching for hours.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re

MINIMUM_KERNEL = (5, 19)


class IOUringUnavailableError(OSError, RuntimeError):
    """io_uring cannot be used here.  `cause` says why, `fix` says what to change."""

    def __init__(self, err: int, cause: str, fix: str):
        super().__init__(err, f"io_uring is unavailable: {cause}. Fix: {fix}")
        self.cause = cause
        self.fix = fix

    def __reduce__(self):
        # Pickled (a ProcessPoolExecutor job, multiprocessing) and copied by what __init__
        # takes, not by OSError's args (errno, message).
        return type(self), (self.errno, self.cause, self.fix)


def _kernel_release() -> str:
    # What platform.release() returns, without importing platform (~0.1 MiB of a process that
    # only needs this one string).
    return os.uname().release


def kernel_version() -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", _kernel_release())
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _seccomp_mode() -> int | None:
    status = _read("/proc/self/status") or ""
    m = re.search(r"^Seccomp:\s*(\d+)", status, re.M)
    return int(m.group(1)) if m else None


def _in_group(group) -> bool:
    """Whether this process is in the group kernel.io_uring_group names: the sysctl then lets it
    through, and an EPERM comes from something else (a seccomp filter, most likely)."""
    try:
        gid = int(group)
    except (TypeError, ValueError):
        return False
    return gid >= 0 and (gid == os.getegid() or gid in os.getgroups())


def diagnose(err: int) -> IOUringUnavailableError:
    """Explain an io_uring_setup failure with errno `err`."""
    version = kernel_version()
    disabled = _read("/proc/sys/kernel/io_uring_disabled")
    seccomp = _seccomp_mode()
    if version < (5, 1):
        # First: no profile or sysctl can give a kernel what it does not have (a container on
        # an old host runs under seccomp too).
        return IOUringUnavailableError(
            err, f"this kernel ({_kernel_release()}) predates io_uring (Linux 5.1)",
            f"use Linux >= {MINIMUM_KERNEL[0]}.{MINIMUM_KERNEL[1]} built with CONFIG_IO_URING=y")
    if disabled == "2":
        return IOUringUnavailableError(
            err, "the sysctl kernel.io_uring_disabled=2 disables io_uring for every process",
            "run `sysctl -w kernel.io_uring_disabled=0` as root (or set it in /etc/sysctl.d), or "
            "use uringloop.new_event_loop(fallback=True) to run on the stock asyncio loop")
    group = (_read("/proc/sys/kernel/io_uring_group") or "?") if disabled == "1" else None
    if disabled == "1" and err == errno.EPERM and not _in_group(group):
        if group == "-1":
            return IOUringUnavailableError(
                err, "the sysctl kernel.io_uring_disabled=1 allows io_uring only to processes "
                     "with CAP_SYS_ADMIN (kernel.io_uring_group is -1: no group)",
                "set kernel.io_uring_group to a group this user is in, or "
                "kernel.io_uring_disabled=0")
        return IOUringUnavailableError(
            err, "the sysctl kernel.io_uring_disabled=1 allows io_uring only to members of "
                 f"group {group} (kernel.io_uring_group) and CAP_SYS_ADMIN",
            "add this user to that group, or set kernel.io_uring_disabled=0")
    if err in (errno.EPERM, errno.ENOSYS) and seccomp == 2:
        return IOUringUnavailableError(
            err, "a seccomp filter blocks the io_uring system calls (Docker's and containerd's "
                 "default profiles, and Kubernetes' RuntimeDefault, do this)",
            "allow io_uring_setup, io_uring_enter and io_uring_register in the container's "
            "seccomp profile (docker run --security-opt seccomp=<profile.json>; in Kubernetes "
            "securityContext.seccompProfile with a Localhost profile), or run with "
            "uringloop.new_event_loop(fallback=True)")
    if err == errno.ENOSYS:
        return IOUringUnavailableError(
            err, f"this kernel ({_kernel_release()}) has no io_uring (CONFIG_IO_URING is off)",
            f"use Linux >= {MINIMUM_KERNEL[0]}.{MINIMUM_KERNEL[1]} built with CONFIG_IO_URING=y")
    if err == errno.ENOMEM and version < (5, 12):
        return IOUringUnavailableError(
            err, "the kernel refused memory for the rings; kernels before 5.12 charge them to "
                 "RLIMIT_MEMLOCK, which is " + _memlock(),
            "raise the locked-memory limit (ulimit -l, LimitMEMLOCK= in systemd, --ulimit "
            "memlock= in Docker) or upgrade the kernel")
    if err == errno.ENOMEM and not _may_lock_memory():
        # Ring memory is charged to RLIMIT_MEMLOCK again on recent kernels (6.18 measured) for
        # a process without CAP_IPC_LOCK; Ring() has already tried the smallest ring it makes
        # (64 entries, a few KiB).
        return IOUringUnavailableError(
            err, "the kernel refused memory for the rings: for a process without CAP_IPC_LOCK "
                 "it charges them to the locked-memory limit (RLIMIT_MEMLOCK, which is "
                 f"{_memlock()}) before Linux 5.12 and again on recent kernels, and to the "
                 "memory cgroup",
            "raise the locked-memory limit (ulimit -l, LimitMEMLOCK= in systemd, docker run "
            "--ulimit memlock=-1) or the memory limit, or free memory")
    if err == errno.ENOMEM:
        return IOUringUnavailableError(
            err, "the kernel refused memory for the rings (charged to the memory cgroup since "
                 "Linux 5.12: the container's or service's memory limit is reached, or the "
                 "system is out of memory)",
            "raise the memory limit (docker run --memory, MemoryMax= in systemd, the pod's "
            "resources.limits.memory) or free memory")
    if err == errno.EPERM:
        return IOUringUnavailableError(
            err, "the kernel denied io_uring_setup (a security module or sandbox policy)",
            "check seccomp/AppArmor/SELinux policy for io_uring, or run with "
            "uringloop.new_event_loop(fallback=True)")
    if version < MINIMUM_KERNEL or err == errno.EINVAL:
        return IOUringUnavailableError(
            err, f"this kernel ({_kernel_release()}) lacks io_uring features uringloop needs",
            f"use Linux >= {MINIMUM_KERNEL[0]}.{MINIMUM_KERNEL[1]}")
    return IOUringUnavailableError(err, f"io_uring_setup failed: {os.strerror(err)}",
                                   "see `python -m uringloop` for this kernel's report")


def _may_lock_memory() -> bool:
    """Whether this process has CAP_IPC_LOCK, which spares it the locked-memory limit (True
    when /proc does not say)."""
    m = re.search(r"^CapEff:\s*([0-9a-fA-F]+)", _read("/proc/self/status") or "", re.M)
    return m is None or bool(int(m.group(1), 16) & (1 << 14))     # CAP_IPC_LOCK


def _memlock() -> str:
    try:
        import resource
        soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        return "unlimited" if soft == resource.RLIM_INFINITY else f"{soft // 1024} KiB"
    except (ImportError, OSError):
        return "unknown"


# Opcode numbers are kernel ABI (include/uapi/linux/io_uring.h).
OPCODES = {
    "NOP": 0, "READV": 1, "WRITEV": 2, "FSYNC": 3, "POLL_ADD": 6, "POLL_REMOVE": 7,
    "SENDMSG": 9, "RECVMSG": 10, "TIMEOUT": 11, "ACCEPT": 13, "ASYNC_CANCEL": 14,
    "LINK_TIMEOUT": 15, "CONNECT": 16, "OPENAT": 18, "CLOSE": 19, "STATX": 21, "READ": 22,
    "WRITE": 23, "SEND": 26, "RECV": 27, "SPLICE": 30, "SHUTDOWN": 34, "MSG_RING": 40,
    "SOCKET": 45, "SEND_ZC": 47, "SENDMSG_ZC": 48, "WAITID": 50, "BIND": 56, "LISTEN": 57,
    "EPOLL_WAIT": 59,
}

SETUP_FLAGS = {
    "SUBMIT_ALL": 1 << 7, "COOP_TASKRUN": 1 << 8, "TASKRUN_FLAG": 1 << 9,
    "SINGLE_ISSUER": 1 << 12, "DEFER_TASKRUN": 1 << 13, "R_DISABLED": 1 << 6,
}

FEATURES = {
    "SINGLE_MMAP": 1 << 0, "NODROP": 1 << 1, "SUBMIT_STABLE": 1 << 2, "FAST_POLL": 1 << 5,
    "EXT_ARG": 1 << 8, "NATIVE_WORKERS": 1 << 9, "CQE_SKIP": 1 << 11, "LINKED_FILE": 1 << 12,
    "REG_REG_RING": 1 << 13, "RECVSEND_BUNDLE": 1 << 14, "MIN_TIMEOUT": 1 << 15,
}


@dataclasses.dataclass
class ProbeReport:
    kernel: str
    kernel_version: tuple
    available: bool
    error: str | None = None
    cause: str | None = None
    fix: str | None = None
    setup_flags: list = dataclasses.field(default_factory=list)
    features: list = dataclasses.field(default_factory=list)
    opcodes: list = dataclasses.field(default_factory=list)
    # The optional mechanisms the loop will use on this kernel, name -> bool.
    uses: dict = dataclasses.field(default_factory=dict)

    def format(self) -> str:
        lines = [f"kernel: {self.kernel}",
                 f"io_uring: {'available' if self.available else 'UNAVAILABLE'}"]
        if not self.available:
            lines += [f"error: {self.error}", f"cause: {self.cause}", f"fix: {self.fix}"]
            return "\n".join(lines)
        lines.append("setup flags accepted: " + (", ".join(self.setup_flags) or "(none)"))
        lines.append("features: " + ", ".join(self.features))
        lines.append("opcodes: " + ", ".join(self.opcodes))
        lines.append("the loop will use:")
        width = max(len(k) for k in self.uses)
        for name, used in self.uses.items():
            lines.append(f"  {name:<{width}}  {'yes' if used else 'no'}")
        return "\n".join(lines)


_PBUF_OK = None
# feature_set()'s answer for each set of setup flags a ring got: the rest of it is the kernel's
# (its version, its opcodes, provided-buffer rings), the same for every ring of the process.
_FEATURES_BY_SETUP_FLAGS: dict = {}


def feature_set(ring) -> dict:
    """The optional mechanisms the loop uses where `ring`'s kernel has them (the loop consults
    this; the report prints it).  What the kernel has and the loop does not use -- zero-copy
    send (measured slower on loopback, _sendside.pyx), IORING_OP_WAITID (_children.pyx says
    why not), recv bundles (not tried) -- shows in the report's opcode and feature lists only."""
    from uringloop._ring import BufferRing
    global _PBUF_OK
    known = _FEATURES_BY_SETUP_FLAGS.get(ring.setup_flags)
    if known is not None:
        return dict(known)
    version = kernel_version()
    ops = {name for name, code in OPCODES.items() if ring.supports(code)}
    if _PBUF_OK is None:
        # Registering a one-buffer group is the only way to know; done once per process, since
        # the answer is the kernel's and every loop would otherwise pay two extra syscalls.
        try:
            BufferRing(ring, 0xfff0, 1, 4096).close()
            _PBUF_OK = True
        except OSError:
            _PBUF_OK = False
    pbuf = _PBUF_OK
    inc = pbuf and version >= (6, 12)
    features = {
        "single_issuer_defer_taskrun": bool(ring.setup_flags & SETUP_FLAGS["DEFER_TASKRUN"]),
        "coop_taskrun": bool(ring.setup_flags & SETUP_FLAGS["COOP_TASKRUN"]),
        "multishot_recv": "RECV" in ops and pbuf and version >= (6, 0),
        "provided_buffer_rings": pbuf,
        "incremental_buffers": inc,
        "splice": "SPLICE" in ops,
        "epoll_wait": "EPOLL_WAIT" in ops,
    }
    _FEATURES_BY_SETUP_FLAGS[ring.setup_flags] = features
    return dict(features)


def probe() -> ProbeReport:
    """Create a ring and report what this kernel's io_uring offers (never raises)."""
    from uringloop._ring import Ring
    release = _kernel_release()
    version = kernel_version()
    try:
        ring = Ring()            # (the size a loop asks for, and its fallbacks)
    except OSError as exc:
        err = diagnose(exc.errno or errno.EINVAL)
        return ProbeReport(kernel=release, kernel_version=version, available=False,
                           error=str(exc), cause=err.cause, fix=err.fix)
    try:
        flags = [n for n, bit in SETUP_FLAGS.items() if ring.setup_flags & bit]
        feats = [n for n, bit in FEATURES.items() if ring.features & bit]
        ops = [n for n, code in OPCODES.items() if ring.supports(code)]
        uses = feature_set(ring)
    finally:
        ring.close()
    report = ProbeReport(kernel=release, kernel_version=version, available=True,
                         setup_flags=flags, features=feats, opcodes=ops, uses=uses)
    old = too_old()
    if old is not None:
        report.available = False
        report.error = f"kernel {release} is older than {MINIMUM_KERNEL}"
        report.cause = old.cause
        report.fix = old.fix
    return report


def too_old() -> IOUringUnavailableError | None:
    """The error for a kernel that has io_uring but not all uringloop relies on, or None.

    Such a kernel (5.11-5.18) sets a ring up, and a loop would run on it -- until it closes:
    the close-time IORING_ASYNC_CANCEL_ALL|ANY is 5.19's, refused with EINVAL before, and every
    close would wait out its drain and leak the ring."""
    if kernel_version() >= MINIMUM_KERNEL:
        return None
    return IOUringUnavailableError(
        errno.EINVAL,
        f"this kernel ({_kernel_release()}) has io_uring but not the features uringloop relies "
        "on (IORING_ASYNC_CANCEL_ALL/ANY, COOP_TASKRUN: Linux 5.19)",
        f"use Linux >= {MINIMUM_KERNEL[0]}.{MINIMUM_KERNEL[1]}, or "
        "uringloop.new_event_loop(fallback=True)")
