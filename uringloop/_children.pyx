# cython: language_level=3
"""Reaping child processes without a thread: a pidfd per child, polled on the ring.

The stock loop learns that a child exited from a "child watcher": a thread blocked in waitpid()
per child (ThreadedChildWatcher, the default before 3.12) or a pidfd registered with the selector
(PidfdChildWatcher).  Here the pidfd (pidfd_open(2), Linux 5.3) gets a one-shot IORING_OP_POLL_ADD;
the kernel completes it when the process becomes a zombie, and the completion handler reaps it at
once with waitid(P_PIDFD, WNOHANG) -- which cannot block, and cannot reap the wrong process even
if the pid was reused -- then hands the exit code to the subprocess transport.

Why not IORING_OP_WAITID (6.7), which would reap in the kernel and save the waitid call?  The
Popen object asyncio keeps for each child reaps too: Popen.poll() (called by the transport's
close(), and by send_signal() before 3.13) runs waitpid(pid, WNOHANG).  Between a kernel-side
reap and our completion being dispatched, that waitpid would fail with ECHILD, which Popen turns
into returncode 0 -- a wrong exit status.  Reaping synchronously in the completion handler and
storing the result in Popen.returncode in the same step leaves no such window; if Popen reaped
first, its returncode is the answer.

The exit code follows the stock loop: the exit status, or -N for a child killed by signal N.
"""

cimport cython

from uringloop._sys cimport ECANCELED, POLLIN
from uringloop._proactor cimport Completer, Proactor, Operation, OP_IDLE, os_error
from uringloop._ops cimport PollOp

import os
import sys
import threading as _threading
from contextvars import copy_context as _copy_context

from asyncio.log import logger as _logger

cdef object _waitid = os.waitid
cdef int P_PIDFD = os.P_PIDFD
cdef int WAIT_OPTIONS = os.WEXITED | os.WNOHANG
cdef int CLD_EXITED = os.CLD_EXITED
cdef int P_PID = os.P_PID
cdef int WAIT_EXITED_NOWAIT = os.WEXITED | os.WNOWAIT      # wait for the exit, leave the zombie

# What becomes of a child the loop has not reaped when it closes follows the stock loop's default
# watcher.  Before 3.12 that is ThreadedChildWatcher, a thread per child, which outlives the loop
# and reaps the child whenever it exits.  From 3.12 it is PidfdChildWatcher, whose pidfd reader
# dies with the loop: the child stays a zombie until Popen reaps it (a Popen collected unreaped is
# reaped by the next Popen's cleanup).
cdef bint REAP_AFTER_CLOSE = sys.version_info < (3, 12)
# Whose words the warnings are in: the default watcher's (see above).
cdef bint PIDFD_WATCHER_IS_DEFAULT = sys.version_info >= (3, 12)
# The context the transport learns of the exit in follows it too.  The pidfd watcher's reader is
# registered by subprocess_exec() with the caller's context, and the exit reaches the transport
# from it: process_exited() and connection_lost() run in the caller's context.  The threaded
# watcher hands the exit over from its thread, in that thread's (empty) context.
cdef bint EXIT_IN_CALLERS_CONTEXT = sys.version_info >= (3, 12)
# The threaded watcher says in debug mode that a child exited, as soon as it has reaped it; the
# pidfd watcher says nothing.
cdef bint LOG_EXIT_IN_DEBUG = sys.version_info < (3, 12)


@cython.final
cdef class ChildWatcher(Completer):
    """The loop's children: pid -> poll on its pidfd."""

    def __init__(self, loop):
        self.loop = loop
        self.proactor = <Proactor>loop._proactor
        self.watches = {}

    def watch(self, popen, callback):
        """Call callback(returncode) (from the ready queue) once the child of popen exits."""
        cdef PollOp poll
        cdef int pidfd
        try:
            pidfd = os.pidfd_open(popen.pid)
        except ProcessLookupError:
            # Already reaped, by Popen itself: it knows the status.
            self.loop.call_soon(callback, self.exit_code_from_popen(popen))
            return
        except OSError:
            # pidfd_open refused (a seccomp profile that predates it answers EPERM/ENOSYS):
            # the stock loop's fallback, one thread waiting for this child (wait_in_thread).
            _threading.Thread(target=self.wait_in_thread, args=(popen, callback),
                              name=f"uringloop-waitpid-{popen.pid}", daemon=True).start()
            return
        poll = PollOp(self.proactor, self, pidfd, None)
        poll.events = POLLIN
        poll.tag = (pidfd, popen, callback,
                    _copy_context() if EXIT_IN_CALLERS_CONTEXT else None)
        self.watches[popen.pid] = poll
        try:
            poll.submit()
        except BaseException:
            del self.watches[popen.pid]
            os.close(pidfd)
            raise

    cdef int op_done(self, Operation op, int res, unsigned flags) except -1:
        cdef PollOp poll = <PollOp>op
        cdef int pidfd
        pidfd, popen, callback, context = poll.tag
        if res == -ECANCELED:
            # The loop is closing: the child is left to Popen (which reaps it when collected),
            # or before 3.12 to a thread (REAP_AFTER_CLOSE).
            self.let_go(poll)
            return 0
        if res < 0:
            self.forget(poll)
            self.loop.call_exception_handler({
                'message': f'polling the pidfd of child {popen.pid} failed',
                'exception': os_error(-res),
            })
            return 0
        returncode = self.reap(pidfd, popen)
        if returncode is None:
            # Readable but not exited (it cannot happen for a pidfd, but a poll may wake
            # spuriously): wait again.
            if not self.proactor.closing:
                poll.submit()
            else:
                self.let_go(poll)
            return 0
        self.forget(poll)
        if LOG_EXIT_IN_DEBUG:
            self.log_exit(popen.pid, returncode)
        # One pass of the ready queue later, as on the stock loop: its watcher learns of the
        # exit in a reader callback, which is itself behind the callbacks already queued, and
        # hands it on with call_soon_threadsafe().  The transport's process_exited() then
        # comes after the pipe_connection_lost() of a stdin the child closed as it exited (the
        # write pipe learns of that in its hang-up completion and acts from the ready queue:
        # _pipes.WritePipeCore.completed), as it does there -- stdout's and stderr's end
        # before both.
        self.loop.call_soon(self.loop.call_soon, callback, returncode, context=context)
        return 0

    cdef int log_exit(self, object pid, object returncode) except -1:
        if self.loop.get_debug():
            _logger.debug('process %s exited with returncode %s', pid, returncode)
        return 0

    cdef object reap(self, int pidfd, object popen):
        try:
            info = _waitid(P_PIDFD, pidfd, WAIT_OPTIONS)
        except ChildProcessError:
            # Popen.poll() got there first (the transport's close() and, before Python 3.13,
            # send_signal() call it).
            return self.exit_code_from_popen(popen)
        if info is None:
            return None
        if info.si_code == CLD_EXITED:
            returncode = info.si_status
        else:
            returncode = -info.si_status        # killed (or dumped core) by that signal
        if popen.returncode is None:
            # Now, in the same step as the reap: a later Popen.poll() must not go looking for
            # a process that no longer exists.
            popen.returncode = returncode
        return returncode

    def wait_in_thread(self, popen, callback):
        # Waits for the exit without reaping (WNOWAIT), then reaps through Popen.wait(), whose
        # lock orders the reap with the program's own poll()/wait() on the same Popen.  A bare
        # waitpid() here reaped behind Popen's back: a Popen.poll() between it and the loop
        # running `callback` (the transport's close() calls one; so does send_signal() before
        # 3.13), or any after the loop had closed (the callback then never runs), found no
        # child and left Popen reporting 0 instead of the real status.
        pid = popen.pid
        try:
            info = _waitid(P_PID, pid, WAIT_EXITED_NOWAIT)
        except ChildProcessError:
            # Reaped already: by Popen, which knows the status, or behind its back.
            returncode = self.exit_code_from_popen(popen)
        else:
            if info.si_code == CLD_EXITED:
                returncode = info.si_status
            else:
                returncode = -info.si_status    # killed (or dumped core) by that signal
            popen.wait()        # a zombie now: returns at once
        # (This is the threaded watcher's way, and its debug log, on every Python.)
        self.log_exit(pid, returncode)
        try:
            self.loop.call_soon_threadsafe(callback, returncode)
        except RuntimeError:
            # The loop was closed meanwhile.  The child is reaped all the same (above); say so,
            # as the stock loop's watcher thread does in this case.
            _logger.warning("Loop %r that handles pid %r is closed", self.loop, pid)

    def exit_code_from_popen(self, popen):
        returncode = popen.returncode
        if returncode is None:
            # Reaped by someone who did not tell Popen (a waitpid(-1) elsewhere): the stock
            # child watchers report 255 in that case, in the words of the default one -- from
            # 3.12 the pidfd watcher's, before the threaded watcher's.
            if PIDFD_WATCHER_IS_DEFAULT:
                _logger.warning("child process pid %d exit status already read: "
                                " will report returncode 255", popen.pid)
            else:
                _logger.warning("Unknown child process pid %d, will report returncode 255",
                                popen.pid)
            returncode = 255
        return returncode

    cdef int let_go(self, PollOp poll) except -1:
        """Stop watching a child the closing loop has not reaped.  Before 3.12, as the stock
        watcher thread would: a child that has already exited is reaped now (that thread would
        have reaped it before the close), one still running by a thread when it exits."""
        cdef int pidfd
        pidfd, popen, callback, _ = poll.tag
        try:
            if REAP_AFTER_CLOSE and self.reap(pidfd, popen) is None:
                try:
                    _threading.Thread(target=_reap_after_close, args=(self.loop, popen),
                                      name=f"uringloop-reap-{popen.pid}", daemon=True).start()
                except RuntimeError:
                    pass        # no thread to be had (interpreter shutdown): left to Popen
        finally:
            self.forget(poll)
        return 0

    cdef int forget(self, PollOp poll) except -1:
        pidfd, popen, callback, _ = poll.tag
        poll.tag = None
        if self.watches.get(popen.pid) is poll:
            del self.watches[popen.pid]
        os.close(pidfd)
        return 0

    def close(self):
        """The loop is closing: stop watching (the drain delivers the cancellations)."""
        cdef PollOp poll
        for poll in list(self.watches.values()):
            if poll.state != OP_IDLE:
                poll.cancel()

    def __len__(self):
        return len(self.watches)


def _reap_after_close(loop, popen):
    # Through Popen.wait(), not a bare waitpid() as the stock thread: Popen's lock orders it
    # with the program's own poll()/wait() on the same Popen, which then see the real status
    # (a waitpid() behind Popen's back leaves it to report 0).
    popen.wait()
    # The thread starts while the loop closes (let_go), and a child killed just before may be
    # reaped before close() is done: the stock thread then hands its callback to the closing
    # loop, which drops it, and says nothing; it warns only of a loop already closed.
    if loop.is_closed():
        _logger.warning("Loop %r that handles pid %r is closed", loop, popen.pid)
