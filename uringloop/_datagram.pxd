from uringloop._sys cimport sockaddr_storage, socklen_t
from uringloop._ring cimport BufferRing
from uringloop._proactor cimport Operation
from uringloop._ops cimport MsgOp, PollOp
from uringloop._flow cimport TransportCore


cdef class DatagramCore(TransportCore):
    cdef object sock
    cdef readonly int fd
    cdef int family
    cdef bint by_socket                    # a family whose addresses the core does not convert:
                                           # the socket's own recvfrom/sendto (see the module)
    cdef object address                    # the fixed remote address (remote_addr=), or None
    cdef bint connected                    # the socket has a peer: send without an address
    cdef Operation recv_op                 # the one recvmsg the kernel holds for us: multishot
                                           # (IPv4/6, when the kernel can) or a MsgOp; for
                                           # by_socket, a POLLIN poll
    cdef BufferRing bufs                   # the loop's datagram buffers, for the multishot one
    cdef bytearray recv_buf                # lent to the kernel while a MsgOp is in flight
    cdef object send_q                     # datagrams (MsgOps) waiting for room, in order
    cdef list spare_ops                    # idle MsgOps, for reuse
    cdef PollOp send_poll                  # queued datagrams wait for room with it
    cdef object peer_addr                  # the address of the last datagram received ...
    cdef sockaddr_storage peer_sockaddr    # ... and its binary form, for replies to it
    cdef socklen_t peer_sockaddr_len

    cdef bint socket_gone(self) except -1
    cdef int recv_done(self, int res) except -1
    cdef int multishot_done(self, int res, unsigned flags) except -1
    cdef int recv_failed(self, int res) except -1
    cdef int readable_done(self, int res) except -1
    cdef int socket_closed_under_receive(self) except -1
    cdef int deliver(self, object data, object addr) except -1
    cdef int error_received(self, object exc) except -1
    cdef bint send_at_once(self, MsgOp op, object data) except -1
    cdef ssize_t send_now(self, MsgOp op, void *buf, Py_ssize_t n, int *err) noexcept
    cdef int pump_sends(self) except -1
    cdef int arm_send_poll(self) except -1
    cdef int send_poll_done(self, int res) except -1
    cdef int sendto_by_socket(self, object data, object addr) except -1
    cdef int send_by_socket(self, object data, object addr) except -1
    cdef int send_queued_inline(self) except -1
    cdef int force_close(self, object exc) except -1
    cdef int fatal_error(self, object exc, str message) except -1
    cdef int release_if_idle(self) except -1
