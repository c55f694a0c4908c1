# cython: language_level=3
"""Datagram transports (UDP and AF_UNIX datagram sockets) as io_uring completions.

Receiving
---------
The transport keeps exactly one receive request in the kernel.  For IPv4/IPv6 sockets, where the
kernel has provided-buffer rings, it is a *multishot* recvmsg: armed once, it completes once per
datagram, each landing in a buffer the kernel takes from a group shared by the loop's UDP
transports, so every datagram queued on the socket is delivered in the same loop iteration.  The
datagram and its source address are copied out, the buffer goes straight back to the group, and
protocol.datagram_received(data, addr) is called from the completion handler: no readiness event,
no Handle, no recvfrom system call.  If the group runs dry the kernel ends the request (ENOBUFS);
the datagrams wait in the socket and the request is re-armed once buffers are back.  AF_UNIX
datagrams may exceed the group's 64 KiB buffers, so those sockets (and kernels without buffer
rings) use a one-shot recvmsg into a 256 KiB buffer of the transport's own (the stock
transport's max_size), resubmitted from its completion before the protocol is called.

An error completion is the kernel reporting an ICMP error queued on the socket (ECONNREFUSED on
a connected UDP socket, for instance), which the stock loop passes to
protocol.error_received(); so do we, and receive again.

pause_reading() cancels the in-flight recvmsg (ASYNC_CANCEL).  The cancel can lose the race: the
operation may complete with a datagram after all.  That datagram is real and is kept ("stashed")
and delivered, in order, before anything else once reading resumes -- nothing is lost.

Sending
-------
sendto() first offers the datagram to the socket itself, with one non-blocking sendmsg(2), as
the stock loop and uvloop do: a send to a socket with room completes inside the call, and a
failure the kernel reports there (an unreachable network, EMSGSIZE, a refused unix peer...)
reaches protocol.error_received() before sendto() returns, the write buffer stays empty and the
protocol is never paused -- programs that count on any of the three behave as on the stock
loop.  (A sendmsg operation per datagram, batched into the iteration's io_uring_enter, had
reported those errors an iteration late and paused protocols the stock loop never pauses.)
Only a datagram the socket cannot take now (EAGAIN), or any sent while earlier ones wait, is
queued (a MsgOp holding the data and the destination address).  Bytes queued count as the
write buffer for flow control.  The queue waits with one POLLOUT poll on the ring, and its
datagrams go out inline, one non-blocking sendmsg(2) each, in order, once there is room
(send_queued_inline) -- the stock loop's way.  A failed send is reported to
protocol.error_received() as the stock loop does.  bytearray and memoryview arguments are
copied first, because the stock sendto() has consumed them by the time it returns and callers
reuse them.  A reply to the sender of the last datagram takes its destination from the binary
address the kernel reported (no parsing of the Python tuple).

Why not a sendmsg request in the kernel per queued datagram, waiting there for room?  Two
reasons.  Requests waiting for room on one socket are not resumed in the order they began to
wait: UDP datagrams that had waited behind a full send buffer (a shaped link) left largely in
reverse order, ~1,400 out-of-order steps in 3,000 with 64 requests in flight, where the stock
loop sends them in order.  And a unix datagram send copies the data out of the caller's buffer
*before* it finds the receiver's queue full and fails with EAGAIN; a blocking sendmsg(2) waits
first and copies after, but an io_uring sendmsg request waits for room and then tries again
with the data already consumed, and sends an *empty* datagram (Linux 6.18; a sock_sendto() of
200 datagrams to a receiver reading slowly delivered 2 empty, a transport's 112 with 64
requests in flight 30 empty, out of order).

Other address families
----------------------
The core converts the addresses of AF_INET, AF_INET6, AF_UNIX and AF_NETLINK as the socket
module does (_sockaddr.converts_sockaddr). A socket of any other family given with sock=
(AF_PACKET, AF_CAN, AF_TIPC...) would have had its senders reported in a raw (family, bytes)
form no user expects -- the stock transport gives what socket.recvfrom() gives, ('lo', 0x88b5,
0, 772, b'...') for AF_PACKET -- and could not send to the addresses socket.sendto() takes
(EAFNOSUPPORT). Such a transport ("by_socket") therefore receives and sends with the socket's
own methods, as the stock transport does: it waits for input with a POLLIN poll on the ring and
reads with recvfrom() until the socket has nothing more (a bounded number per poll), and sends
with sendto()/send() at once, queueing what would block and sending it once a POLLOUT poll says
there is room. A cancelled poll loses nothing, so no stash is needed there.

Closing
-------
The socket is closed only when the kernel holds no operation on it any more (every final CQE
has arrived), so a file descriptor number is never reused while an operation might still name
it.  Until then the transport stays in loop._transports as "closing".
"""

cimport cython
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.errno cimport errno
from libc.string cimport memcpy, memset

from uringloop._sys cimport (ECANCELED, EBADF, EAGAIN, EINTR, ENOBUFS, POLLIN, POLLOUT, socklen_t,
                             sockaddr_storage, msghdr, iovec,
                             io_uring_sqe, io_uring_recvmsg_out, ul_prep_recvmsg_multishot,
                             IORING_CQE_F_MORE, IORING_CQE_F_BUFFER, IORING_CQE_BUFFER_SHIFT)
from uringloop._ring cimport BufferRing
from uringloop._proactor cimport Proactor, Operation, OP_IDLE, socket_fd_now, os_error
from uringloop._ops cimport MsgOp, PollOp
from uringloop._sockaddr cimport sockaddr_to_python, converts_sockaddr
from uringloop._flow cimport TransportCore, add_socket_extra, not_contiguous_error
from uringloop._flow import CoreTransportMixin, CoreReadingMixin, CoreWritingMixin

import collections
import errno as _errno
import socket as _socket
import sys

from asyncio import transports as _transports

cdef extern from "<sys/socket.h>" nogil:
    int MSG_NOSIGNAL
    int MSG_DONTWAIT
    ssize_t c_sendmsg "sendmsg"(int fd, const msghdr *msg, int flags)

cdef object _deque = collections.deque
cdef int AF_UNIX = _socket.AF_UNIX
cdef int AF_INET = _socket.AF_INET
cdef int AF_INET6 = _socket.AF_INET6

# The stock transport's recvfrom() size.
cdef Py_ssize_t MAX_DATAGRAM = 256 * 1024
# Idle MsgOps (address holders for sendto()) a transport keeps for reuse.
cdef Py_ssize_t MAX_SPARE_OPS = 64
# Datagrams a by_socket transport reads per readiness before it polls again (the stock reader
# reads one per loop iteration; a few more save round trips through the ring, and the bound
# keeps a flooded socket from holding the loop).
cdef int READS_PER_POLL = 16
# Python 3.13 sends zero-length datagrams; earlier versions silently drop them.
cdef bint SEND_EMPTY = sys.version_info >= (3, 13)
# From 3.13 each queued datagram counts 8 bytes more in the write buffer (for its header), so
# that a queue of empty datagrams still reaches the high-water mark and pauses the protocol.
# (3.13.0 adds them when it queues and forgets them when it sends, so its buffer never drains
# to 0 again: CPython gh-135444, fixed in later 3.13 releases.  We count them out as they were
# counted in.)
cdef Py_ssize_t QUEUED_DATAGRAM_OVERHEAD = 8 if sys.version_info >= (3, 13) else 0
# Errors that mean the socket itself is gone: reporting them to error_received() and receiving
# again would only repeat them, so they end the transport.
cdef frozenset FATAL_RECV_ERRORS = frozenset({EBADF, _errno.ENOTSOCK, _errno.EINVAL})


# Multishot receive (IPv4/IPv6 only: their datagrams fit in a 64 KiB buffer, AF_UNIX ones may
# not): one buffer group per loop, shared by its UDP transports.  A buffer holds the kernel's
# io_uring_recvmsg_out header, room for a sockaddr_storage, and the largest UDP payload.
cdef unsigned MULTISHOT_BUFFERS = 16
cdef unsigned NAME_ROOM = sizeof(sockaddr_storage)
cdef unsigned HEADER_ROOM = sizeof(io_uring_recvmsg_out) + sizeof(sockaddr_storage)
cdef unsigned MULTISHOT_BUF_SIZE = HEADER_ROOM + 65536


@cython.final
cdef class MultishotRecvMsgOp(Operation):
    """A recvmsg that stays armed and completes once per datagram, each in a buffer the kernel
    takes from a provided-buffer group."""
    cdef msghdr msg
    cdef unsigned bgid

    cdef int prep(self, io_uring_sqe *sqe) except -1:
        memset(&self.msg, 0, sizeof(msghdr))
        self.msg.msg_namelen = NAME_ROOM
        self.receives = True
        ul_prep_recvmsg_multishot(sqe, self.fd, &self.msg, self.bgid, self.ud())
        return 0


cdef BufferRing _multishot_buffers(loop):
    """The loop's datagram buffer group, created on first use; None where it cannot be."""
    cdef BufferRing bufs = loop._ul_datagram_buffers
    if bufs is None and loop._ul_datagram_buffers_failed is None:
        if not loop._features.get('multishot_recv'):
            loop._ul_datagram_buffers_failed = True
            return None
        try:
            bufs = (<Proactor>loop._proactor).new_buffer_ring(MULTISHOT_BUFFERS,
                                                               MULTISHOT_BUF_SIZE)
        except (OSError, MemoryError):
            loop._ul_datagram_buffers_failed = True
            return None
        loop._ul_datagram_buffers = bufs
    return bufs


cdef object _no_address_error(int family):
    # What socket.sendto(data, None) raises on an unconnected socket.
    if family == AF_UNIX:
        return TypeError("a bytes-like object is required, not 'NoneType'")
    name = 'AF_INET6' if family == AF_INET6 else 'AF_INET'
    return TypeError(f"sendto(): {name} address must be tuple, not NoneType")


@cython.final
cdef class DatagramCore(TransportCore):

    def __init__(self, loop, transport, sock, protocol, address, bint connected):
        TransportCore.__init__(self, loop, transport, protocol)
        self.sock = sock
        self.fd = sock.fileno()
        self.family = sock.family
        self.address = address
        self.connected = connected
        if self.family == AF_INET or self.family == AF_INET6:
            self.bufs = _multishot_buffers(loop)
        self.by_socket = not converts_sockaddr(self.family)
        if self.bufs is not None:
            self.recv_op = MultishotRecvMsgOp(self.proactor, self, self.fd, None)
            (<MultishotRecvMsgOp>self.recv_op).bgid = self.bufs.bgid
        elif self.by_socket:
            # Addresses only the socket's own recvfrom() converts (see the module's docstring):
            # the ring waits for input, the socket reads.
            self.recv_op = PollOp(self.proactor, self, self.fd, None)
            (<PollOp>self.recv_op).events = POLLIN
        else:
            self.recv_buf = bytearray(MAX_DATAGRAM)
            self.recv_op = MsgOp(self.proactor, self, self.fd, None)
        # socket_gone() stops a request made after the socket was closed under the transport,
        # not one made before: a receive armed (resume_reading(), a re-arm), then in a later
        # callback of the same pass the owner closes the socket and a new one takes its number,
        # all before the loop's io_uring_enter, where the kernel looks the number up -- the
        # receive would take the new socket's datagrams.  So the Proactor looks again just
        # before the enter (StaleFdGuard, as for sock_*) and fails such a request with EBADF.
        # For every datagram transport: its requests are few (one multishot receive armed
        # for good, a poll while sends wait), so the check costs next to nothing.
        self.recv_op.guards_fd = True
        self.send_q = _deque()
        self.spare_ops = []

    # ---- receiving ----

    def start_reading(self):
        """Scheduled right after protocol.connection_made()."""
        if not self.closing and not self.paused and not self.stash:
            self.start_receive()

    cdef bint socket_gone(self) except -1:
        """Whether its owner closed the socket under the transport (a sock= argument): its
        number may be another socket's by now, and nothing may go to the kernel by it -- a
        receive armed would read that socket's datagrams, a send would leave from it.  (The
        stock transport calls the closed object's methods, which raise EBADF.)"""
        cdef object sock = self.sock
        if sock is None:
            return False
        return socket_fd_now(sock) != self.fd

    cdef int start_receive(self) except -1:
        cdef Operation op = self.recv_op
        if op.state != OP_IDLE or self.proactor.closing or self.sock is None:
            return 0
        if self.socket_gone():
            return 0        # as the stock loop's reader goes with the closed descriptor
        if self.bufs is None and not self.by_socket and not (<MsgOp>op).has_view:
            (<MsgOp>op).set_buffer(self.recv_buf, True)
        op.keep = self.sock
        op.submit()
        return 0

    cdef int stop_receive(self) except -1:
        if self.recv_op.state != OP_IDLE:
            self.recv_op.cancel()
        return 0

    cdef bint completion_failed(self, Operation op, object exc) except -1:
        self.fatal_error(exc, 'Fatal read error on datagram transport' if op is self.recv_op
                         else 'Fatal write error on datagram transport')
        return True

    cdef int completed(self, Operation op, int res, unsigned flags) except -1:
        if op is self.recv_op:
            if self.bufs is not None:
                self.multishot_done(res, flags)
            elif self.by_socket:
                self.readable_done(res)
            else:
                self.recv_done(res)
        elif op is self.send_poll:
            self.send_poll_done(res)
        self.release_if_idle()
        return 0

    cdef int multishot_done(self, int res, unsigned flags) except -1:
        cdef bint final = not (flags & IORING_CQE_F_MORE)
        cdef unsigned bid, namelen
        cdef char *buf
        cdef io_uring_recvmsg_out *out
        cdef Py_ssize_t size
        cdef object data = None, addr = None
        if flags & IORING_CQE_F_BUFFER:
            bid = flags >> IORING_CQE_BUFFER_SHIFT
            buf = self.bufs.buffer(bid)
            try:
                if res >= 0:
                    out = <io_uring_recvmsg_out *>buf
                    size = out.payloadlen
                    if size > <Py_ssize_t>(self.bufs.buf_size - HEADER_ROOM):
                        size = self.bufs.buf_size - HEADER_ROOM      # truncated, as recvfrom
                    data = PyBytes_FromStringAndSize(buf + HEADER_ROOM, size)
                    namelen = out.namelen if out.namelen < NAME_ROOM else NAME_ROOM
                    if namelen:
                        addr = sockaddr_to_python(
                            <sockaddr_storage *>(buf + sizeof(io_uring_recvmsg_out)),
                            namelen, self.family)
                        memcpy(&self.peer_sockaddr, buf + sizeof(io_uring_recvmsg_out), namelen)
                        self.peer_sockaddr_len = namelen
                        self.peer_addr = addr
            finally:
                # Copied out: the buffer goes back to the group (published after this batch).
                self.bufs.give_back(bid)
        if (data is not None or res == -EBADF) and self.socket_gone():
            # (-EBADF: the Proactor failed a receive armed just before the close: recv_op's
            # guards_fd.)
            return self.socket_closed_under_receive()
        if data is not None:
            try:
                if self.closing:
                    pass
                elif self.paused or self.stash:
                    self.stash.append((data, addr))
                else:
                    self.deliver(data, addr)
            finally:
                # (Also when datagram_received() raised KeyboardInterrupt or SystemExit: a
                # loop run again goes on receiving.)
                if final and not self.closing and not self.paused and not self.stash:
                    self.start_receive()     # the kernel ended the multishot request: start another
            return 0
        if res == -ECANCELED or res == -ENOBUFS or res >= 0:
            # Cancelled (pause/close/loop closing), or the group ran dry for a moment: the
            # datagrams wait in the socket; receive again once the buffers are back.
            if final and not self.closing and not self.paused and not self.stash:
                self.start_receive()
            return 0
        return self.recv_failed(res)

    cdef int recv_failed(self, int res) except -1:
        if self.closing:
            return 0
        if -res in FATAL_RECV_ERRORS:
            self.fatal_error(os_error(-res), 'Fatal read error on datagram transport')
            return 0
        if not self.paused:
            self.start_receive()
        self.error_received(os_error(-res))
        return 0

    cdef int readable_done(self, int res) except -1:
        """A by_socket transport's POLLIN poll completed (see the module's docstring): the
        datagrams are read by the socket's own recvfrom(), as the stock transport's reader
        reads them, so that datagram_received() gets the socket module's addresses."""
        cdef int reads = 0
        cdef object sock = self.sock
        if res == -ECANCELED:
            # pause_reading()/close() asked for it -- or the loop is closing.  Nothing was read:
            # the datagrams wait in the socket.  If reading was resumed meanwhile, go on.
            if not self.closing and not self.paused:
                self.start_receive()
            return 0
        if self.closing or sock is None:
            return 0
        if self.socket_gone():
            return self.socket_closed_under_receive()
        if res < 0:
            return self.recv_failed(res)
        try:
            # datagram_received() may pause or close the transport, or close the socket under
            # it: each read asks again.
            while (reads < READS_PER_POLL and not self.closing and not self.paused
                   and not self.socket_gone()):
                reads += 1
                try:
                    data, addr = sock.recvfrom(MAX_DATAGRAM, MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    # An error queued on the socket (what the stock reader passes to
                    # error_received()); one that says the socket itself is gone ends it.
                    if exc.errno in FATAL_RECV_ERRORS:
                        self.fatal_error(exc, 'Fatal read error on datagram transport')
                    else:
                        self.error_received(exc)
                    continue
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    self.fatal_error(exc, 'Fatal read error on datagram transport')
                    break
                self.deliver(data, addr)
        finally:
            # Poll again -- also when datagram_received() raised KeyboardInterrupt or
            # SystemExit: a loop run again goes on receiving.  (start_receive() does nothing for a
            # socket closed under the transport, nor when resume_reading() has armed it.)
            if not self.closing and not self.paused:
                self.start_receive()
        return 0

    cdef int recv_done(self, int res) except -1:
        cdef MsgOp op = <MsgOp>self.recv_op
        cdef object data, addr
        if res == -ECANCELED:
            # pause_reading()/close() asked for it -- or the loop is closing.  If reading was
            # resumed meanwhile, go on.
            if not self.closing and not self.paused and not self.stash:
                self.start_receive()
            return 0
        if self.closing:
            return 0            # completed after close(): the stock loop would not read it
        if self.socket_gone():
            return self.socket_closed_under_receive()
        if res < 0:
            return self.recv_failed(res)
        data = PyBytes_FromStringAndSize(<char *>op.view.buf, res)
        # No address (an unbound AF_UNIX sender): None, as socket.recvfrom() returns.
        if op.msg.msg_namelen:
            addr = op.address(self.family)
            if op.msg.msg_namelen <= sizeof(self.peer_sockaddr):
                memcpy(&self.peer_sockaddr, &op.addr, op.msg.msg_namelen)
                self.peer_sockaddr_len = op.msg.msg_namelen
                self.peer_addr = addr
        else:
            addr = None
        if self.paused or self.stash:
            self.stash.append((data, addr))
            return 0
        self.start_receive()
        self.deliver(data, addr)
        return 0

    cdef int socket_closed_under_receive(self) except -1:
        """The owner closed the socket (a sock= argument) while our receive was in the kernel,
        which kept its file open: what that receive got is dropped -- the stock transport's
        reader went with the closed descriptor and reads nothing more -- and the receive ends,
        which lets the file go (the port is free again).  The transport stays open, as the
        stock one does; its sendto() reports EBADF to error_received()."""
        self.stop_receive()
        return 0

    cdef int deliver(self, object data, object addr) except -1:
        try:
            self.protocol.datagram_received(data, addr)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self.callback_failed('datagram_received', (data, addr), exc)
        return 0

    cdef int error_received(self, object exc) except -1:
        try:
            self.protocol.error_received(exc)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc2:
            self.callback_failed('error_received', (exc,), exc2)
        return 0

    cdef int deliver_stashed(self, object item) except -1:
        data, addr = item
        return self.deliver(data, addr)

    # ---- sending ----

    def sendto(self, data, addr=None):
        """Send data to addr (or to the transport's remote address)."""
        cdef MsgOp op
        if type(data) is not bytes and not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f'data argument must be a bytes-like object, '
                            f'not {type(data).__name__!r}')
        if not SEND_EMPTY and not data:
            return
        if self.address:
            if addr not in (None, self.address):
                raise ValueError(f'Invalid address: must be None or {self.address}')
            addr = self.address
        if (self.conn_lost and self.address) or self.lost:
            self.count_lost_write('socket.send() raised exception.')
            return
        # From here on, protocol.error_received() is called directly, not through the
        # exception-reporting wrapper: as in the stock sendto(), what it raises goes out of
        # sendto() to its caller.
        if self.socket_gone():
            self.protocol.error_received(os_error(EBADF))   # what the stock sendto() gets
            return
        if self.by_socket:
            self.sendto_by_socket(data, addr)
            return
        if (type(data) is memoryview and not (<memoryview>data).c_contiguous
                and not self.send_q and not self.proactor.closing):
            # With nothing queued the stock transport hands the view to socket.sendto(), which
            # refuses a view that is not contiguous (a slice with a step) before it looks at the
            # address: a fatal write error, nothing sent.  (Behind queued datagrams it is copied
            # with bytes() and sent later, by either transport.)
            self.fatal_error(not_contiguous_error(), 'Fatal write error on datagram transport')
            return
        if self.spare_ops:
            op = <MsgOp>self.spare_ops.pop()
            op.keep = self.sock
        else:
            op = MsgOp(self.proactor, self, self.fd, self.sock)
            op.sending = True
        try:
            if self.connected:
                op.msg.msg_namelen = 0
            elif addr is not None and addr is self.peer_addr:
                # A reply to the sender of the last datagram (the echo/server pattern): the
                # kernel gave us that address in binary form, no need to parse it back.
                memcpy(&op.addr, &self.peer_sockaddr, self.peer_sockaddr_len)
                op.msg.msg_namelen = self.peer_sockaddr_len
            elif addr is None:
                raise _no_address_error(self.family)
            else:
                op.set_address(self.family, addr)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            if self.send_q or self.proactor.closing:
                # Behind queued datagrams the stock transport queues this one with its address
                # as given, and the address fails when its turn comes: the datagrams before it
                # leave first.  So it waits in the queue with its error (send_queued_inline).
                op.tag = exc
                op.msg.msg_namelen = 0
            elif isinstance(exc, OSError):
                # What socket.sendto() raises for an unusable address (gaierror, ...).
                self.protocol.error_received(exc)
                return
            else:
                # A wrong address type: the stock transport treats it as fatal.
                self.fatal_error(exc, 'Fatal write error on datagram transport')
                return
        if not self.send_q and not self.proactor.closing:
            if self.send_at_once(op, data):
                return
        if type(data) is not bytes:
            data = bytes(data)
        op.set_buffer(data, False)
        self.buffer_size += op.view.len + QUEUED_DATAGRAM_OVERHEAD
        self.send_q.append(op)
        self.pump_sends()
        self.maybe_pause_protocol()

    cdef bint send_at_once(self, MsgOp op, object data) except -1:
        """Offer the datagram to the socket with one non-blocking sendmsg(2), to the address
        `op` holds (see the module's docstring): true when the socket took it or refused it (the
        error is reported), false when it would block and `op` is to carry it."""
        cdef Py_buffer view
        cdef ssize_t sent
        cdef int err
        try:
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        except BufferError:
            return False        # (not reached: sendto() refused a view not contiguous)
        sent = self.send_now(op, view.buf, view.len, &err)
        PyBuffer_Release(&view)
        if sent < 0 and (err == EAGAIN or err == EINTR):
            return False
        op.keep = None
        if len(self.spare_ops) < MAX_SPARE_OPS:
            self.spare_ops.append(op)
        if sent < 0:
            self.protocol.error_received(os_error(err))     # raises out of sendto() (above)
        return True

    cdef ssize_t send_now(self, MsgOp op, void *buf, Py_ssize_t n, int *err) noexcept:
        """One non-blocking sendmsg(2) of buf[:n] to the address `op` holds: what it returned,
        with its errno in *err."""
        cdef msghdr msg
        cdef iovec iov
        cdef ssize_t sent
        memset(&msg, 0, sizeof(msg))
        iov.iov_base = buf
        iov.iov_len = <size_t>n
        msg.msg_iov = &iov
        msg.msg_iovlen = 1
        if op.msg.msg_namelen:
            msg.msg_name = &op.addr
            msg.msg_namelen = op.msg.msg_namelen
        self.proactor.note_sent(self.fd)
        sent = c_sendmsg(self.fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL)
        err[0] = errno
        return sent

    cdef int pump_sends(self) except -1:
        if self.send_q and self.socket_gone():
            # Queued datagrams of a socket closed under the transport: none may leave by its
            # number (the stock transport's would wait forever for a closed descriptor).
            return self.fatal_error(os_error(EBADF), 'Fatal write error on datagram transport')
        return self.arm_send_poll()     # see the module's docstring

    cdef int arm_send_poll(self) except -1:
        """Wait for room for the queued datagrams (see the module's docstring)."""
        if not self.send_q or self.proactor.closing or self.sock is None or self.conn_lost:
            return 0
        if self.send_poll is None:
            self.send_poll = PollOp(self.proactor, self, self.fd, None)
            self.send_poll.guards_fd = True      # (see recv_op's)
            self.send_poll.events = POLLOUT
        elif self.send_poll.state != OP_IDLE:
            return 0
        self.send_poll.keep = self.sock
        self.send_poll.submit()
        return 0

    cdef int send_poll_done(self, int res) except -1:
        if self.conn_lost or self.proactor.closing:
            return 0            # aborted (the queue is gone), or the loop is closing
        if self.socket_gone():
            return self.fatal_error(os_error(EBADF), 'Fatal write error on datagram transport')
        self.send_queued_inline()
        self.maybe_resume_protocol()
        if self.closing and not self.conn_lost and not self.send_q:
            # close() was waiting for the queued datagrams.
            self.conn_lost += 1
            self.loop.call_soon(self.call_connection_lost, None)
        return 0

    cdef int sendto_by_socket(self, object data, object addr) except -1:
        """sendto() of a by_socket transport (see the module's docstring): the socket's own
        send()/sendto() converts the address, at once when nothing waits before it; what would
        block is queued with its address as given, for send_queued_inline().  Errors as the
        stock sendto() has them: an OSError goes to protocol.error_received() (what that raises
        goes out of sendto()), anything else (an address of the wrong form) is fatal."""
        cdef MsgOp op
        if not self.send_q and not self.proactor.closing:
            try:
                self.send_by_socket(data, addr)
                return 0
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                self.protocol.error_received(exc)
                return 0
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self.fatal_error(exc, 'Fatal write error on datagram transport')
                return 0
        # The MsgOp only holds the data (and counts it): the address stays a Python object
        # in its tag, for the socket's sendto(); it never goes to the kernel as an operation.
        op = MsgOp(self.proactor, self, self.fd, self.sock)
        op.sending = True
        op.tag = addr
        op.set_buffer(data if type(data) is bytes else bytes(data), False)
        self.buffer_size += op.view.len + QUEUED_DATAGRAM_OVERHEAD
        self.send_q.append(op)
        self.pump_sends()
        self.maybe_pause_protocol()
        return 0

    cdef int send_by_socket(self, object data, object addr) except -1:
        """One non-blocking send of a by_socket transport through the socket's own method:
        send() when connected, else sendto() with the address as given (the socket converts it).
        Raises what the method raises; the callers tell a full socket from an error."""
        if self.connected:
            self.sock.send(data, MSG_DONTWAIT)
        else:
            self.sock.sendto(data, MSG_DONTWAIT, addr)
        return 0

    cdef int send_queued_inline(self) except -1:
        """Send the queued datagrams in order, one non-blocking sendmsg(2) each, until the
        socket has no room or one fails; then wait for room again."""
        cdef MsgOp op
        cdef ssize_t sent
        cdef int err
        cdef object exc
        while self.send_q:
            op = <MsgOp>self.send_q[0]
            exc = None
            if self.by_socket:
                # The socket's own method, with the address as it was given (sendto_by_socket).
                try:
                    self.send_by_socket(op.obj, op.tag)
                except (BlockingIOError, InterruptedError):
                    break
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as e:
                    exc = e
            elif op.tag is not None:
                exc = op.tag        # its address failed when sendto() queued it (sendto)
            else:
                sent = self.send_now(op, op.view.buf, op.view.len, &err)
                if sent < 0 and (err == EAGAIN or err == EINTR):
                    break
                if sent < 0:
                    exc = os_error(err)
            self.send_q.popleft()
            self.buffer_size -= op.view.len + QUEUED_DATAGRAM_OVERHEAD
            op.drop_buffer()
            op.keep = op.tag = None     # (not reused: error_received() below may call sendto())
            if exc is not None:
                if not isinstance(exc, OSError):
                    # An address the socket refused by its form: fatal, as in the stock sendto.
                    return self.fatal_error(exc, 'Fatal write error on datagram transport')
                self.error_received(exc)
                if self.conn_lost:
                    return 0
                # One error per round of room, as the stock transport's writer callback
                # reports one and returns: the rest stay queued (counted in the write buffer,
                # holding a close() back) until the socket is writable again.
                break
        return self.arm_send_poll()

    # ---- closing ----

    def close(self):
        if self.closing:
            return
        self.closing = True
        self.stop_receive()
        if not self.send_q:
            self.conn_lost += 1
            self.loop.call_soon(self.call_connection_lost, None)

    def abort(self):
        self.force_close(None)

    cdef int force_close(self, object exc) except -1:
        cdef MsgOp op
        cdef bint was_closing = self.closing
        if self.conn_lost:
            return 0
        # Marked lost and closing before anything is cancelled: a cancel that never reached
        # the kernel completes inside cancel(), and its handler must see a transport that is
        # over (connection_lost() scheduled once, with `exc`; no resume_writing()).
        self.conn_lost += 1
        self.closing = True
        while self.send_q:
            op = <MsgOp>self.send_q.popleft()
            self.buffer_size -= op.view.len + QUEUED_DATAGRAM_OVERHEAD
            op.drop_buffer()
        if self.send_poll is not None and self.send_poll.state != OP_IDLE:
            self.send_poll.cancel()
        if not was_closing:
            self.stop_receive()
        self.stash.clear()
        self.loop.call_soon(self.call_connection_lost, exc)
        return 0

    cdef int fatal_error(self, object exc, str message) except -1:
        self.report_fatal_error(exc, message, isinstance(exc, OSError))
        self.force_close(exc)
        return 0

    cdef int release_if_idle(self) except -1:
        # The socket outlives every operation that names its fd (see the module docstring).
        cdef object sock = self.sock
        if not self.lost or sock is None:
            return 0
        if self.recv_op.state != OP_IDLE:
            return 0
        if self.send_poll is not None and self.send_poll.state != OP_IDLE:
            return 0
        self.sock = None
        transports = self.loop._transports
        if self.transport is not None and transports.get(self.fd) is self.transport:
            del transports[self.fd]
        sock.close()
        self.let_go_of_the_loop()
        return 0

    def close_unclosed(self):
        """The transport object is being collected without close(): release the socket."""
        cdef object sock = self.sock
        if sock is None:
            return False
        self.sock = None
        transports = self.loop._transports
        # (After loop_closed() there is no transport to compare: the table's entry, dead by
        # now that the transport is being collected, reads as absent and is left alone.)
        if self.transport is not None and transports.get(self.fd) is self.transport:
            del transports[self.fd]
        sock.close()
        return True

    @property
    def fd_open(self):
        return self.sock is not None

    @property
    def multishot(self):
        """True when datagrams arrive through a multishot recvmsg (IPv4/IPv6 on kernels with
        provided-buffer rings), False for one recvmsg per datagram."""
        return self.bufs is not None

    @property
    def receiving(self):
        return self.recv_op.state != OP_IDLE

    @property
    def sends_queued(self):
        return len(self.send_q)


class UringDatagramTransport(CoreTransportMixin, CoreReadingMixin, CoreWritingMixin,
                             _transports.DatagramTransport, _transports.Transport):
    # Also an asyncio.Transport, as the stock datagram transport is (it shares its base class
    # with the stream transport); its stream methods raise NotImplementedError there too.
    """asyncio.DatagramTransport on io_uring; the work is done by its compiled DatagramCore."""

    def __init__(self, loop, sock, protocol, address=None, waiter=None, extra=None):
        super().__init__(extra)
        self._core = None
        extra = self._extra
        add_socket_extra(extra, sock)
        self._loop = loop
        core = DatagramCore(loop, self, sock, protocol, address, bool(extra['peername']))
        self._core = core
        # sendto is the hot path: bind the compiled method on the instance so that a call does
        # not go through a Python-level method first.
        self.sendto = core.sendto
        loop._transports[core.fd] = self
        self._announce(loop, protocol, waiter, core.start_reading)

    def __repr__(self):
        core = self._core
        info = self._repr_info()
        if core is not None and core.fd_open:
            info.append('read=receiving' if core.receiving else 'read=idle')
            state = 'sending' if core.sends_queued else 'idle'
            info.append(f'write=<{state}, bufsize={core.buffer_size}>')
        return '<{}>'.format(' '.join(info))

    def sendto(self, data, addr=None):
        # Replaced per instance by the core's method (see __init__); kept for introspection.
        self._core.sendto(data, addr)
