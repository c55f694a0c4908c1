# The per-socket state of loop.sock_* (see _sockstate.pyx): its queues of requests, the
# operations it holds in the kernel, and what it keeps for callers that had gone.

cimport cython
from uringloop._proactor cimport Proactor, Completer, Operation
from uringloop._ops cimport BufferOp, RecvOp, SendOp, PollOp


cdef enum Kind:
    K_RECV, K_RECV_INTO, K_RECVFROM, K_RECVFROM_INTO, K_SEND, K_SENDTO, K_ACCEPT, K_CONNECT,
    K_SEND_TURN     # the socket's sending side for a while (sock_sendfile): see end_send_turn

cdef enum:
    CONNECT_UNDER_WAY = -1      # Request.nbytes of a K_CONNECT whose connect(2) was made
                                # (_sockio._connect_at_once)
    CONNECT_FOUND_MADE = -2     # ... whose connect(2) said EINPROGRESS and a poll with no
                                # timeout found the connection made (start_connect)


@cython.final
cdef class Request:
    cdef object fut
    cdef SocketState state
    cdef int kind
    cdef object buf            # *_INTO: the caller's buffer; send: the data
    cdef Py_ssize_t nbytes
    cdef object address


@cython.final
cdef class SocketState(Completer):
    cdef Proactor proactor
    cdef object loop
    cdef object sock_ref
    cdef int fd
    cdef int family
    cdef bint stream
    # receiving
    cdef object recv_q
    cdef Operation recv_op
    cdef bytearray stash              # stream bytes received for a caller that had gone
    # The receive last served, until its coroutine resumes and takes the result (claimed) or,
    # cancelled before that, gives it back (give_back).  No later receive is served meanwhile:
    # bytes given back go to the front of the stash, and a later caller served in between
    # would have taken the bytes that followed them -- out of order.
    cdef Request unclaimed
    cdef object dgram_stash           # datagrams (data, address) a cancelled task never took
    cdef object stash_exc             # an error whose caller had gone
    cdef bint stash_eof               # the stream's end, met by a receive whose caller had gone
    # A transport that took the socket while a receive of ours was in the kernel
    # (forget_socket, hand_over).
    cdef object handover
    # accepting
    cdef object accept_q
    cdef Operation accept_op          # a PollOp, or an AcceptOp for a blocking listener
    cdef PollOp spare_poll            # the POLLIN poll an accept (or a datagram receive) waits with
    cdef object accepted              # connections (fd, address) whose caller had gone
    # sending
    cdef object send_q
    cdef Operation send_op
    cdef Request send_turn            # a K_SEND_TURN holding the sending side: nothing else sends
    # The last finished receive and send, kept for the next request: a sock_* echo loop would
    # otherwise build and free one operation object per call.
    cdef RecvOp spare_recv
    cdef SendOp spare_send

    cdef int queue_recv(self, Request req) except -1
    cdef int queue_send(self, Request req) except -1
    cdef int end_send_turn(self, Request req) except -1
    cdef bint kept_error_stops_empty_reads(self) except -1
    cdef object leftovers(self)
    cdef int adopt(self, tuple leftovers) except -1
    cdef int claimed(self, Request req) except -1
    cdef int queue_accept(self, Request req) except -1
    cdef object datagram_stash(self)
    cdef object accepted_stash(self)
    cdef bint idle(self)
    cdef bint has_requests_in_kernel(self)
    cdef bint socket_closed(self) except -1
    cdef int abandon_requests_in_kernel(self) except -1
    cdef int fail_closed(self, object q) except -1
    cdef Request new_request(self, int kind)
    cdef int request_cancelled(self, Request req) except -1
    cdef int pump_recv(self) except -1
    cdef int withdraw_receive(self, Request req) except -1
    cdef Operation make_recv_op(self, Request req)
    cdef PollOp readable_poll(self)
    cdef object receive_now(self, Request req)
    cdef int serve_from_stash(self, Request req) except -1
    cdef object stream_sender(self)
    cdef int serve_datagram(self, Request req, object data, Py_ssize_t n, object addr) except -1
    cdef Request next_request(self, object q)
    cdef Request finish_request(self, Operation op, object q)
    cdef int give_back(self, Request req, object result) except -1
    cdef int fail(self, Request req, object exc) except -1
    cdef object take_connection_error(self)
    cdef int recv_done(self, BufferOp op, int res) except -1
    cdef int hand_over(self, Request finished) except -1
    cdef object accept_now(self)
    cdef object connection(self, int fd)
    cdef int deliver_connection(self, Request req, int fd, object addr) except -1
    cdef int pump_accept(self) except -1
    cdef int accept_done(self, Operation op, int res) except -1
    cdef Operation start_connect(self, Request req)
    cdef Operation sendto_now(self, Request req)
    cdef int connect_error(self) except -1
    cdef Operation make_send_op(self, Request req)
    cdef int pump_send(self) except -1
    cdef int send_done(self, Operation op, int res) except -1
    cdef int recv_poll_done(self, Operation op, int res) except -1
    cdef discard(self)
