# cython: language_level=3
"""Signal delivery as a completion: the wake-up socket is read by a recv on the ring.

asyncio's UNIX signal handling rests on signal.set_wakeup_fd(): the interpreter's C-level signal
handler writes each signal number as one byte to a non-blocking descriptor, and the loop turns
every byte into a call of the handler registered with add_signal_handler().  The stock loop reads
its self-pipe when the selector reports it readable; here one end of a socketpair is the wake-up
descriptor and a recv(2) on the other end is always in flight on the ring.  Its completion is
processed like any other: the bytes are the signals, each schedules its Handle, and the recv is
resubmitted.

A signal that interrupts the loop's io_uring_enter makes the call return early (or restart, with
SA_RESTART as add_signal_handler sets it); either way the byte written by the C handler completes
the recv, which the next enter collects -- a signal never waits for an unrelated event.
"""

cimport cython
from posix.unistd cimport close

from uringloop._sys cimport ECANCELED
from uringloop._proactor cimport Completer, Proactor, Operation, OP_IDLE, os_error
from uringloop._ops cimport RecvOp

import socket as _socket


@cython.final
cdef class SignalReader(Completer):

    def __cinit__(self):
        self.read_fd = self.write_fd = -1

    def __init__(self, loop):
        self.loop = loop
        self.proactor = <Proactor>loop._proactor
        # Kept as numbers, detached from their socket objects, and closed by close_sockets()
        # once the loop's close has drained the ring.  A socket object would close its number
        # from its own finalizer: a loop dropped without close() is collected with everything
        # it holds in one batch of cyclic garbage (it is in reference cycles: with its
        # Proactor, with this reader), whose finalizers run in no set order -- on 3.11 the
        # sockets' came before the loop's __del__, each warning of an unclosed socket, and the
        # recv the loop's close then submitted named a closed descriptor (EBADF, reported as a
        # failed signal receive).
        read_sock, write_sock = _socket.socketpair()
        # set_wakeup_fd() requires a non-blocking descriptor: the C handler must never block.
        write_sock.setblocking(False)
        read_sock.setblocking(False)
        self.read_fd = read_sock.detach()
        self.write_fd = write_sock.detach()
        self.buf = bytearray(4096)
        self.recv_op = RecvOp(self.proactor, self, self.read_fd, None)

    def __dealloc__(self):
        # Not closed by the loop (never closed, or its close failed): nothing can submit
        # a request by these numbers any more.
        if self.read_fd >= 0:
            close(self.read_fd)
        if self.write_fd >= 0:
            close(self.write_fd)

    def start(self):
        """Put the recv in the kernel (from the loop's thread)."""
        self.arm()

    cdef int arm(self) except -1:
        cdef RecvOp op = self.recv_op
        if self.stopped or self.read_fd < 0 or op.state != OP_IDLE or self.proactor.closing:
            return 0
        if not op.has_view:
            op.set_buffer(self.buf, True)
        op.submit()
        return 0

    cdef int op_done(self, Operation op, int res, unsigned flags) except -1:
        cdef const unsigned char[:] received
        cdef Py_ssize_t i
        if res > 0:
            # Resubmit first: a signal arriving while a handler runs is not missed.
            received = bytes(self.buf[:res])
            self.arm()
            handle_signal = self.loop._handle_signal
            for i in range(res):
                if received[i]:
                    handle_signal(received[i])
        elif res == -ECANCELED:
            self.arm()              # stopped, or the loop is closing: arm() checks
        elif res < 0:
            self.loop.call_exception_handler({
                'message': 'receiving from the signal wake-up socket failed',
                'exception': os_error(-res),
            })
        return 0

    def stop(self):
        """The loop is closing: stop receiving (the drain delivers the cancellation)."""
        self.stopped = True
        if self.recv_op.state != OP_IDLE:
            self.recv_op.cancel()

    def close_sockets(self):
        """After the drain: nothing in the kernel names the sockets any more.  The receive
        lets go of us, its owner (a reference cycle, through which a closed loop would be left
        to the cyclic collector: Proactor.let_go_of_the_loop)."""
        if self.recv_op.state == OP_IDLE:
            self.recv_op.owner = None
        if self.read_fd >= 0:
            close(self.read_fd)
            self.read_fd = -1
        if self.write_fd >= 0:
            close(self.write_fd)
            self.write_fd = -1

    @property
    def wakeup_fd(self):
        return self.write_fd

    @property
    def receiving(self):
        return self.recv_op.state != OP_IDLE
