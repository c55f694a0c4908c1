# cython: language_level=3
"""The operation kinds: one class per kind of io_uring request the loop makes -- receive, send,
vectored send, multishot receive, datagram message, accept, connect, poll, epoll wait, file
read/write, splice, shutdown, delay.  Each fills its SQE (prep) and, where its kind needs more
than handing the result to its owner, reads its completion (complete): a partial send continues
from inside the operation until every byte is out, a receive notes what it brought.

What every operation is -- pinned with its buffer, descriptor and address from submission to its
final CQE, cancelled with ASYNC_CANCEL, completed through its owner (a Completer) -- is the
Operation base class in _proactor.pyx, beside the Proactor that submits, waits and dispatches;
that module's docstring tells how the pieces fit.  Only the Proactor's own wake-up read
(WakeupOp) lives there too.
"""

cimport cython
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE, PyBUF_WRITABLE
from cpython.mem cimport PyMem_Realloc, PyMem_Free
from libc.stdint cimport uint64_t
from libc.string cimport memset

from uringloop._sys cimport *
from uringloop._proactor cimport Operation, OP_IDLE, still_same_file, call_owner, report_progress
from uringloop._sockaddr cimport sockaddr_to_python, python_to_sockaddr

import socket as _socket


# ---------------------------------------------------------------------------------------------
# operation kinds
# ---------------------------------------------------------------------------------------------

cdef inline unsigned _chunk(BufferOp op):
    # What one submission can move of the rest of the buffer: an SQE's length is 32 bits and a
    # CQE's result a (positive) int.
    cdef Py_ssize_t n = op.view.len - op.offset
    return <unsigned>(n if n <= 0x7fffffff else 0x7fffffff)


cdef int get_writable_buffer(object obj, Py_buffer *view) except -1:
    """A writable view of `obj` for a receive into it, refused with socket.recv_into()'s
    exception type (TypeError) where the object is read-only."""
    try:
        PyObject_GetBuffer(obj, view, PyBUF_WRITABLE)
    except BufferError:
        raise TypeError(f"a writable bytes-like object is required, not "
                        f"'{type(obj).__name__}'") from None
    return 0


cdef object unwritable_buffer_error(object buf, str method):
    """The TypeError socket.`method`() (recv_into, recvfrom_into) raises for a buffer it cannot
    write into -- read-only, not contiguous, not a buffer at all -- with its message: what
    sock_recv_into() raises and what a stream transport fails with when get_buffer() gives one."""
    return TypeError(f"{method}() argument 1 must be read-write bytes-like object, "
                     f"not {'None' if buf is None else type(buf).__name__}")


cdef class BufferOp(Operation):

    cdef int set_buffer(self, object obj, bint writable) except -1:
        self.drop_buffer()
        if writable:
            get_writable_buffer(obj, &self.view)
        else:
            PyObject_GetBuffer(obj, &self.view, PyBUF_SIMPLE)
        self.has_view = True
        self.obj = obj
        self.offset = 0
        return 0

    cdef int drop_buffer(self) except -1:
        if self.has_view:
            self.has_view = False
            PyBuffer_Release(&self.view)
        self.obj = None
        return 0

    cdef void release(self) noexcept:
        # Called only after the final CQE: the kernel is done with the memory.
        if self.has_view:
            self.has_view = False
            PyBuffer_Release(&self.view)
        self.obj = None
        self.keep = None

    @property
    def buffer(self):
        return self.obj

    def __dealloc__(self):
        if self.has_view:
            PyBuffer_Release(&self.view)


@cython.final
cdef class RecvOp(BufferOp):
    cdef int prep(self, io_uring_sqe *sqe) except -1:
        self.receives = True
        ul_prep_recv(sqe, self.fd, <char *>self.view.buf + self.offset, _chunk(self),
                     self.flags, self.ud())
        return 0


@cython.final
cdef class SendOp(BufferOp):
    cdef int prep(self, io_uring_sqe *sqe) except -1:
        self.proactor.note_sent(self.fd)
        ul_prep_send(sqe, self.fd, <char *>self.view.buf + self.offset, _chunk(self),
                     self.flags | MSG_NOSIGNAL, self.ud())
        return 0

    cdef int complete(self, int res, unsigned flags) except -1:
        # Partial sends continue until every byte is out (or an error / cancellation ends it):
        # the owner sees one completion for the whole buffer, res = total bytes sent -- and,
        # for each short send on the way, what it moved (a transport's write buffer shrinks
        # with it: see SendSide.send_progress).
        if res > 0:
            self.offset += res
            if (self.offset < self.view.len and self.state == OP_IDLE and not self.cancel_asked
                    and not self.proactor.closing):
                if not still_same_file(self):
                    return call_owner(self, -EBADF, flags)
                self.submit()
                return report_progress(self, res)
            res = <int>min(self.offset, 0x7fffffff)
        elif self.offset > 0 and res == -ECANCELED:
            # Cancelled part-way: report what went out so the owner can tell the user.
            res = <int>min(self.offset, 0x7fffffff)
        return call_owner(self, res, flags)

    @property
    def sent(self):
        return self.offset


@cython.final
cdef class SendMsgOp(Operation):

    def __dealloc__(self):
        self.drop_views()
        PyMem_Free(self.views)
        PyMem_Free(self.iov)

    cdef int set_buffers(self, list items, Py_ssize_t n) except -1:
        cdef Py_ssize_t i
        cdef void *mem
        self.drop_views()
        mem = PyMem_Realloc(self.views, n * sizeof(Py_buffer))
        if mem == NULL:
            raise MemoryError()
        self.views = <Py_buffer *>mem
        mem = PyMem_Realloc(self.iov, n * sizeof(iovec))
        if mem == NULL:
            raise MemoryError()
        self.iov = <iovec *>mem
        self.total = 0
        self.sent = 0
        self.first = 0
        for i in range(n):
            PyObject_GetBuffer(items[i], &self.views[i], PyBUF_SIMPLE)
            self.count = i + 1
            self.iov[i].iov_base = self.views[i].buf
            self.iov[i].iov_len = <size_t>self.views[i].len
            self.total += self.views[i].len
        return 0

    cdef int add_buffers(self, list items, Py_ssize_t n) except -1:
        """`n` more buffers after those held -- only while the kernel does not have the
        operation (idle, or unsent: Proactor.unsent).  All or none: on an exception it holds
        what it held before.  The held exports move with the array; they are exports of
        bytes and memoryviews, whose release does not look at where the Py_buffer lies."""
        cdef Py_ssize_t i, have = self.count
        cdef void *mem
        mem = PyMem_Realloc(self.views, (have + n) * sizeof(Py_buffer))
        if mem == NULL:
            raise MemoryError()
        self.views = <Py_buffer *>mem
        mem = PyMem_Realloc(self.iov, (have + n) * sizeof(iovec))
        if mem == NULL:
            raise MemoryError()
        self.iov = <iovec *>mem
        try:
            for i in range(have, have + n):
                PyObject_GetBuffer(items[i - have], &self.views[i], PyBUF_SIMPLE)
                self.count = i + 1
                self.iov[i].iov_base = self.views[i].buf
                self.iov[i].iov_len = <size_t>self.views[i].len
                self.total += self.views[i].len
        except BaseException:
            for i in range(have, self.count):
                self.total -= self.views[i].len
                PyBuffer_Release(&self.views[i])
            self.count = have
            raise
        return 0

    cdef void drop_views(self) noexcept:
        cdef Py_ssize_t i
        for i in range(self.count):
            PyBuffer_Release(&self.views[i])
        self.count = 0

    cdef int prep(self, io_uring_sqe *sqe) except -1:
        memset(&self.msg, 0, sizeof(msghdr))
        self.msg.msg_iov = &self.iov[self.first]
        self.msg.msg_iovlen = <size_t>(self.count - self.first)
        self.proactor.note_sent(self.fd)
        ul_prep_msg(sqe, UL_OP_SENDMSG, self.fd, &self.msg, MSG_NOSIGNAL, self.ud())
        return 0

    cdef int complete(self, int res, unsigned flags) except -1:
        cdef Py_ssize_t left
        if res > 0:
            self.sent += res
            left = res
            while left > 0 and self.first < self.count:
                if <Py_ssize_t>self.iov[self.first].iov_len <= left:
                    left -= self.iov[self.first].iov_len
                    self.first += 1
                else:
                    self.iov[self.first].iov_base = (<char *>self.iov[self.first].iov_base) + left
                    self.iov[self.first].iov_len -= <size_t>left
                    left = 0
            if (self.sent < self.total and self.state == OP_IDLE and not self.cancel_asked
                    and not self.proactor.closing):
                if not still_same_file(self):      # (see still_same_file)
                    return call_owner(self, -EBADF, flags)
                self.submit()      # a short send: the rest goes out before the owner hears
                return report_progress(self, res)     # (of the whole; of this part now)
        return call_owner(self, res, flags)

    cdef void release(self) noexcept:
        self.drop_views()
        self.keep = None


cdef extern from "<sys/socket.h>":
    int MSG_NOSIGNAL
    int SOCK_NONBLOCK
    int SOCK_CLOEXEC
    int c_accept4 "accept4"(int fd, sockaddr *addr, socklen_t *addrlen, int flags)


cdef object accept_nonblocking(int fd, int family, int *err):
    """accept4(2) of one connection queued on listening socket `fd`, non-blocking and
    close-on-exec (a socket object made from it with SOCK_NONBLOCK in its type costs no further
    system call): (descriptor, address), or None with *err set (EAGAIN: nothing queued).  The
    accept of servers (_server) and of sock_accept (_sockstate)."""
    cdef sockaddr_storage addr
    cdef socklen_t addrlen = sizeof(sockaddr_storage)
    cdef int conn = c_accept4(fd, <sockaddr *>&addr, &addrlen, SOCK_NONBLOCK | SOCK_CLOEXEC)
    if conn < 0:
        err[0] = errno
        return None
    return conn, sockaddr_to_python(&addr, addrlen, family)


@cython.final
cdef class MultishotRecvOp(Operation):
    cdef int prep(self, io_uring_sqe *sqe) except -1:
        self.receives = True
        ul_prep_recv_multishot(sqe, self.fd, self.bufs.bgid, self.ud())
        return 0


@cython.final
cdef class MsgOp(BufferOp):
    cdef int prep(self, io_uring_sqe *sqe) except -1:
        self.iov.iov_base = <char *>self.view.buf
        self.iov.iov_len = <size_t>self.view.len
        self.msg.msg_iov = &self.iov
        self.msg.msg_iovlen = 1
        self.msg.msg_name = &self.addr
        if not self.sending:
            self.msg.msg_namelen = sizeof(sockaddr_storage)
        self.msg.msg_control = NULL
        self.msg.msg_controllen = 0
        if self.sending:
            self.proactor.note_sent(self.fd)
        else:
            self.receives = True
        ul_prep_msg(sqe, UL_OP_SENDMSG if self.sending else UL_OP_RECVMSG, self.fd, &self.msg,
                    self.flags | (MSG_NOSIGNAL if self.sending else 0), self.ud())
        return 0

    cdef int set_address(self, object family, object address) except -1:
        if address is None:
            self.msg.msg_namelen = 0
        else:
            self.msg.msg_namelen = python_to_sockaddr(address, family, &self.addr)
        return 0

    cdef object address(self, int family):
        return sockaddr_to_python(&self.addr, self.msg.msg_namelen, family)


@cython.final
cdef class AcceptOp(Operation):
    cdef int prep(self, io_uring_sqe *sqe) except -1:
        # SOCK_CLOEXEC|SOCK_NONBLOCK: exactly what socket.accept() + setblocking(False) give.
        self.addrlen = sizeof(sockaddr_storage)
        ul_prep_accept(sqe, self.fd, <sockaddr *>&self.addr, &self.addrlen,
                       _socket.SOCK_CLOEXEC | _socket.SOCK_NONBLOCK, self.ud())
        return 0

    cdef object address(self, int family):
        return sockaddr_to_python(&self.addr, self.addrlen, family)


@cython.final
cdef class ConnectOp(Operation):
    cdef int prep(self, io_uring_sqe *sqe) except -1:
        ul_prep_connect(sqe, self.fd, <sockaddr *>&self.addr, self.addrlen, self.ud())
        return 0

    cdef int set_address(self, int family, object address) except -1:
        self.addrlen = python_to_sockaddr(address, family, &self.addr)
        return 0


@cython.final
cdef class PollOp(Operation):
    cdef int prep(self, io_uring_sqe *sqe) except -1:
        self.receives = (self.events & POLLIN) != 0
        ul_prep_poll(sqe, self.fd, self.events, self.multishot, self.ud())
        return 0


cdef int grow_events(epoll_event **events, int *room, int n) except -1:
    """Room for `n` epoll events in *events (PyMem_Realloc'ed; *room: how many it holds)."""
    cdef epoll_event *grown
    if n > room[0]:
        grown = <epoll_event *>PyMem_Realloc(events[0], n * sizeof(epoll_event))
        if grown == NULL:
            raise MemoryError()
        events[0] = grown
        room[0] = n
    return 0


@cython.final
cdef class EpollWaitOp(Operation):
    def __dealloc__(self):
        # An operation in the kernel is pinned by the Proactor: it is never freed before its
        # final completion, so neither is the buffer the kernel writes into.
        PyMem_Free(self.events)

    cdef int reserve(self, int n) except -1:
        """Ask for up to `n` events at the next submission; only while idle (the kernel writes
        into the buffer while the request is in flight: it is never moved then)."""
        if self.state != OP_IDLE:
            raise RuntimeError("EpollWaitOp.reserve() while in flight")
        grow_events(&self.events, &self.room, n)
        self.maxevents = n
        return 0

    cdef int prep(self, io_uring_sqe *sqe) except -1:
        self.receives = True
        ul_prep_epoll_wait(sqe, self.fd, self.events, <unsigned>self.maxevents, self.ud())
        return 0


@cython.final
cdef class ReadWriteOp(BufferOp):
    cdef int prep(self, io_uring_sqe *sqe) except -1:
        ul_prep_rw(sqe, self.opcode, self.fd, <char *>self.view.buf + self.offset, _chunk(self),
                   <uint64_t>(self.position + self.offset), self.ud())
        return 0


@cython.final
cdef class SpliceOp(Operation):
    cdef int prep(self, io_uring_sqe *sqe) except -1:
        ul_prep_splice(sqe, self.fd, self.off_in, self.fd_out, self.off_out, self.nbytes, 0,
                       self.ud())
        return 0


@cython.final
cdef class ShutdownOp(Operation):
    cdef int prep(self, io_uring_sqe *sqe) except -1:
        ul_prep_shutdown(sqe, self.fd, self.how, self.ud())
        return 0


@cython.final
cdef class DelayOp(Operation):
    cdef int set_delay(self, double seconds) except -1:
        if seconds < 0:
            seconds = 0
        self.delay.tv_sec = <long long>seconds
        self.delay.tv_nsec = <long long>((seconds - <double>self.delay.tv_sec) * 1e9)
        return 0

    cdef int prep(self, io_uring_sqe *sqe) except -1:
        # A relative timeout counting no completions (off = 0): it ends only when the time
        # is up.  The kernel reads `delay` when it prepares the request, but the operation
        # holds it anyway until its final CQE, as every lent memory.
        ul_prep_rw(sqe, UL_OP_TIMEOUT, -1, &self.delay, 1, 0, self.ud())
        return 0
