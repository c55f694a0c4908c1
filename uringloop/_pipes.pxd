from uringloop._proactor cimport Operation
from uringloop._ops cimport BufferOp, PollOp
from uringloop._flow cimport TransportCore


cdef class PipeCore(TransportCore):
    cdef object pipe                       # file object / socket, closed when nothing is in flight
    cdef readonly int fd                   # the caller's number (repr); never submitted
    cdef int own_fd                        # our duplicate: every request names this one
    cdef bint is_socket
    cdef bint lost_scheduled               # connection_lost() is on the ready queue
    cdef int tty_fd                        # a tty's own O_NONBLOCK description, or -1

    cdef int schedule_connection_lost(self, object exc) except -1
    cdef bint busy(self)
    cdef int release_if_idle(self) except -1
    cdef int close_pipe(self) except -1    # close the pipe now (nothing names it in the kernel)


cdef class ReadPipeCore(PipeCore):
    cdef BufferOp read_op                  # read(2) for pipes and devices, recv(2) for sockets
    cdef Operation read_wait               # read_op, or for a tty a POLLIN poll (tty_read)
    cdef bytearray buf                     # lent to the kernel while read_op is in flight
    # Its stash (TransportCore's) holds what completed while paused: bytes, or b'' for EOF.

    cdef int tty_read(self) except? -1
    cdef int got_data(self, object data) except -1
    cdef int got_eof(self) except -1
    cdef int fatal_error(self, object exc, str message) except -1
    cdef int close_with(self, object exc) except -1


cdef class WritePipeCore(PipeCore):
    cdef BufferOp write_op                 # write(2) for pipes and devices, send(2) for sockets
    cdef Operation write_wait              # write_op, or for a tty a POLLOUT poll (tty_write)
    cdef object inflight                   # the bytes the kernel is writing from
    cdef Py_ssize_t inflight_done          # how much of it is written (partial pipe writes)
    cdef bytearray pending                 # written by the protocol while write_op is in flight
    cdef PollOp hangup_poll                # wakes when the reading end goes away
    cdef bint refuses_nowait               # a device without RWF_NOWAIT: write_without_sleeping

    cdef object refuse_scattered(self, object view)
    cdef object write_now(self, object data)
    cdef int start_write(self, object data) except -1
    cdef int submit_rest(self) except -1
    cdef int tty_write(self, int res) except? -1
    cdef ssize_t write_without_sleeping(self, const char *buf, size_t n) noexcept
    cdef int write_done(self, int res) except -1
    cdef int fatal_error(self, object exc, str message) except -1
    cdef int close_with(self, object exc) except -1
