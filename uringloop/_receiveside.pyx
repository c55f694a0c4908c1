# cython: language_level=3
"""The receive half of the stream socket transport: ReceiveSide, the base of
_transports.SocketTransport (and a subclass of SendSide, the send half), owns everything
reading does -- the receive operations, large reads, the stash kept while paused, delivery to
the protocol -- and the loop's provided-buffer ring behind them.  The transport's life cycle
(close, abort, connection_lost), its addresses and its protocol switch live in _transports.pyx.

What the stock _SelectorSocketTransport's reader does with readiness, ReceiveSide does with
operations the kernel completes, and the protocol sees the same sequence of calls.

A Protocol is fed by ONE multishot receive per transport (IORING_RECV_MULTISHOT) drawing from a
provided-buffer ring that the whole loop shares.  Each completion names the buffer the kernel
filled; recv_done copies those bytes into a new bytes object, gives the buffer straight back to the
ring (the Proactor republishes returned buffers after each batch of completions), and calls
protocol.data_received() right there -- no call_soon per chunk.  An idle connection therefore
holds no receive memory at all: buffers are taken only while bytes are being copied out.  The
multishot request ends (final CQE, no IORING_CQE_F_MORE) on EOF, on an error, when the ring ran
dry (-ENOBUFS) or when we cancel it; it is re-armed whenever reading should continue.  After
-ENOBUFS the ring grows (receive_buffers()) and the receive is re-armed on it; once the ring is
as large as it may get, the connection first makes one single-shot receive into a bytes object
of its own (the kernel writes into it, and it is cut to size and delivered without a copy),
then goes back to the ring.

Large reads wait for readiness and are received inline.  The kernel performs the receives of
a batch of completions (deferred task work, at least 20 of them per io_uring_enter when that
many are waiting) before the loop sees the first one, so with large messages one batch writes
megabytes -- more than the CPU's cache -- and by the time a protocol answers the first of them
its bytes are back in memory: the reply's send copies them from there (Protocol echo 100 KiB x
100 connections: the kernel's copy out of the replies took 99 samples per 1,000 requests against
uvloop's 48, and that was the whole gap).  uvloop reads each message into one hot buffer just
before the protocol writes it back.  So a multishot completion of LARGE_READ_FROM bytes or more
cancels the multishot receive, and once its final completion is in, the connection waits with a
POLLIN poll operation instead; when the poll completes, poll_done() receives with one
non-blocking recv(2) into a bytes object of its own (sized by _large_read_size(), cut to size
in place) and hands it to data_received() at once, and the protocol's write() of large data
goes to the socket at once (write_through) while the bytes are still in the cache.  This is
the one place where the transport reads on readiness, the stock loop's way: a poll lends the
kernel no buffer, so a connection waiting for its next large message holds no memory, and
whatever bytes arrive stay in the socket until the loop asks for them (a pause or a close
cancels the poll and nothing is lost).  The first read that returns less than LARGE_READ_UNTIL
puts the connection back on the ring.  Order is kept across both switches because a connection
never has more than one receive (or poll) in flight: the next one is only armed at the previous
one's final CQE.

asyncio's own streams skip data_received().  For exactly StreamReaderProtocol, feeding exactly a
StreamReader whose feed_data() nobody replaced, a large read's recv(2) goes straight onto the
end of the StreamReader's buffer (recv_into_stream_reader), and a receive from the ring is
copied there instead of into a bytes object (copy_into_stream_reader) -- where feed_data() would
have copied the bytes anyway -- and the rest of feed_data() follows (stream_reader_fed).  One
copy and one object fewer per large read, one object and two Python calls fewer per small one:
streams 100 KiB x 10 1.07x, 16 KiB x 10 1.04x, 1 KiB x 10 / x 100 1.04 / 1.03x against the
build before (alternating runs).  Anything else -- a subclass, a reader at EOF (feed_data()
asserts), a buffer someone holds a view of -- takes data_received() as before.

A BufferedProtocol is fed by the same receives.  Its get_buffer() is called when bytes have
arrived, as the stock transport and uvloop call it, and they are copied into the buffer it
returns, then buffer_updated(n) -- once per receive; what does not fit waits for the next pass
of the ready queue (deliver_buffered).  (It used to lend get_buffer()'s buffer to a single-shot
receive from the moment the receive was armed: deliver_buffered says what that broke.)  Kernels
without multishot receive use single-shot receives into a scratch bytes object.  Large reads
are where a BufferedProtocol's buffer is filled directly: a receive of LARGE_READ_FROM bytes or
more moves the connection to a POLLIN poll, and when it completes recv_into_protocol() reads
with one recv(2) into get_buffer()'s buffer and calls buffer_updated() at once.  Against
single-shot receives into the buffer, alternating runs of both builds on this machine (with up
to 4 reads per poll then): 100 KiB x 10 / x 100 / x 1000 1.11 / 1.16 / 1.22x, 16 KiB x 100 /
x 1000 1.22 / 1.22x; the kernel's receives of a whole batch had filled 100 connections'
buffers before the protocol copied the first one out.

pause_reading() cannot unsubmit what the kernel has already completed.  It cancels the receive
(ASYNC_CANCEL); whatever completes before the cancellation lands -- bytes, EOF, an error -- is
kept in `stash`, in order, and handed over after resume_reading() (from a call_soon, as the stock
loop resumes through the next iteration), before anything newer.  Nothing is dropped or
reordered, and nothing is delivered while paused.
"""

from cpython.buffer cimport PyBuffer_Release
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.object cimport PyObject
from cpython.method cimport PyMethod_Check, PyMethod_GET_FUNCTION
from cpython.ref cimport Py_INCREF, Py_DECREF, Py_REFCNT
from cpython.contextvars cimport PyContext_Enter, PyContext_Exit
from libc.string cimport memcpy

from uringloop._sys cimport *
from uringloop._ring cimport BufferRing
from uringloop._proactor cimport Proactor, Operation, os_error
from uringloop._ops cimport (RecvOp, MultishotRecvOp, PollOp, get_writable_buffer,
                             unwritable_buffer_error)
from uringloop._sendside cimport SendSide
from uringloop._sched cimport ul_class_lookup

from asyncio import futures as _futures
from asyncio import protocols as _protocols
from asyncio import streams as _streams
from asyncio.log import logger

cdef extern from "<sys/socket.h>" nogil:
    int MSG_DONTWAIT
    ssize_t c_recv "recv"(int fd, void *buf, size_t n, int flags)

cdef extern from "<sys/ioctl.h>" nogil:
    int FIONREAD
    int c_ioctl_int "ioctl"(int fd, unsigned long request, int *value)

cdef object _BufferedProtocol = _protocols.BufferedProtocol
# asyncio's streams, whose received bytes go straight into the StreamReader's buffer (see the
# module's docstring): only these exact classes with their own methods, so that a subclass or a
# patched method sees every byte through data_received()/feed_data() as on the stock loop.
cdef object _StreamReaderProtocol = _streams.StreamReaderProtocol
cdef object _StreamReader = _streams.StreamReader
cdef object _stock_srp_data_received = _streams.StreamReaderProtocol.data_received
cdef object _stock_feed_data = _streams.StreamReader.feed_data
cdef object _stock_wakeup_waiter = _streams.StreamReader._wakeup_waiter
cdef str _NAME_WAKEUP_WAITER = '_wakeup_waiter'
# asyncio's C Future (the type loop.create_future() makes for StreamReader's waiters) and two of
# its methods, called unbound on it: no method lookup through its type on every receive.  (Such
# a waiter is StreamReader's own, made by the loop; asyncio never sets methods on an instance.)
cdef object _CFuture = getattr(_futures, '_CFuture', None)
cdef object _future_cancelled = _CFuture.cancelled if _CFuture is not None else None
cdef object _future_set_result = _CFuture.set_result if _CFuture is not None else None


cdef extern from *:
    """
    /* size > 2 * limit for an int `limit` from 0 to PY_SSIZE_T_MAX / 2 (1 or 0); -1 for any
       other limit, which the caller compares in Python.  Never raises: for an exact int,
       PyLong_AsLongLongAndOverflow reports overflow in its flag. */
    static inline int ul_above_twice(Py_ssize_t size, PyObject *limit)
    {
        if (PyLong_CheckExact(limit)) {
            int overflow = 0;
            long long n = PyLong_AsLongLongAndOverflow(limit, &overflow);
            if (!overflow && n >= 0 && n <= PY_SSIZE_T_MAX / 2)
                return size > 2 * (Py_ssize_t)n;
        }
        return -1;
    }
    """
    int ul_above_twice(Py_ssize_t size, object limit)


cdef inline bint _above_twice(Py_ssize_t size, object limit) except -1:
    # size > 2 * limit, as StreamReader.feed_data() compares them: in C for an int limit (no
    # Python ints made for the size and for twice the limit on every receive).
    cdef int above = ul_above_twice(size, limit)
    if above >= 0:
        return above
    return size > 2 * limit


cdef inline bint _stock_stream_reader_method(str name, object stock):
    # The asyncio.StreamReader method `name` is asyncio's own (not replaced on the class), as
    # the type's method cache answers: `StreamReader.<name>` would also run the descriptor.
    return ul_class_lookup(_StreamReader, name) == <PyObject *>stock


cdef inline bint _is_stock_method(object bound, object function) noexcept:
    # `bound` is `function` bound to its instance: not replaced on the instance (nor the class).
    return PyMethod_Check(bound) and PyMethod_GET_FUNCTION(bound) == <PyObject *>function


cdef object _feedable_reader(object protocol):
    """The StreamReader that `protocol` (exactly a StreamReaderProtocol) feeds, when its bytes
    may go straight into its buffer: exactly asyncio's class, feed_data() not replaced -- on the
    class or on the instance: the stock transport calls whatever it is at each read -- not at
    EOF (feed_data() asserts), its buffer a bytearray.  None otherwise.

    Through getattr(), not the instance's __dict__: asking for an instance's __dict__ makes
    CPython 3.11+ build one, and every attribute access on that object then goes through it
    instead of the faster inline values (streams echo: +24% instructions per request).  (A
    data_received() replaced on the StreamReaderProtocol *instance* is not looked for: one more
    bound method per read for something no code seen does.)"""
    wr = getattr(protocol, '_stream_reader_wr', None)
    if wr is None:
        return None
    reader = wr()
    if (type(reader) is not _StreamReader or reader._eof
            or not _is_stock_method(reader.feed_data, _stock_feed_data)
            or type(reader._buffer) is not bytearray):
        return None
    return reader


cdef enum:
    # The shared provided-buffer ring (see receive_buffers()).
    RECV_BUFFER_COUNT = 256
    RECV_BUFFER_SIZE = 16384
    INC_BUFFER_COUNT = 2
    INC_BUFFER_SIZE = 32768
    # What the ring may grow to when it runs dry (see receive_buffers()): 32 MiB either way.
    INC_BUFFER_CAPACITY = 1024
    RECV_BUFFER_CAPACITY = 2048
    # Single-shot receives for a Protocol when the kernel lacks multishot receive.
    FALLBACK_RECV_SIZE = 65536
    # Large reads (see the module's docstring, recv_done and _large_read_size()): a multishot
    # completion of LARGE_READ_FROM bytes or more starts them, one of less than
    # LARGE_READ_UNTIL ends them.  Their buffers are at most LARGE_READ_MAX bytes: kept under
    # glibc's mmap threshold (128 KiB, the object's header included) so that malloc() takes
    # them from the heap -- a buffer mapped of its own costs page faults on every receive and
    # an munmap() when freed (measured: 100 KiB echo at 10 connections ran no faster than
    # copying out of the ring).
    LARGE_READ_FROM = 16384
    LARGE_READ_UNTIL = 8192
    LARGE_READ_MAX = 126976
    # The receive that follows -ENOBUFS once the ring cannot grow: as large as a large read.
    DRY_RING_RECV_SIZE = LARGE_READ_MAX


cdef extern from "Python.h":
    int _PyBytes_Resize(PyObject **bytes_ref, Py_ssize_t newsize) except -1


cdef object _received_bytes(RecvOp op, Py_ssize_t n):
    """The first `n` bytes of the bytes object a single-shot receive filled, as bytes.  The
    kernel wrote them straight into it; when nobody else can have seen the object (our
    reference is its only one) it is cut to size in place instead of copied."""
    cdef PyObject *raw
    obj = op.obj
    op.drop_buffer()
    if Py_REFCNT(obj) == 1:
        raw = <PyObject *>obj
        Py_INCREF(obj)              # `raw` owns a reference of its own ...
        obj = None                  # ... and now the only one, as _PyBytes_Resize requires
        return _cut_bytes(raw, n)
    return obj[:n]


cdef object _cut_bytes(PyObject *raw, Py_ssize_t n):
    """The bytes object `raw` cut to its first `n` bytes in place.  Takes over the reference
    `raw`, which must be the object's only one (_PyBytes_Resize may move it)."""
    _PyBytes_Resize(&raw, n)        # on failure it frees the object and raises
    data = <object>raw
    Py_DECREF(data)                 # `data` holds the reference now
    return data


cdef object _recv_inline(int fd, Py_ssize_t size, ssize_t *result):
    """One non-blocking recv(2) of up to `size` bytes into a new bytes object: that object, cut
    to what arrived, when bytes came; None otherwise, with *result 0 (EOF) or -errno."""
    cdef PyObject *raw
    cdef ssize_t n
    data = PyBytes_FromStringAndSize(NULL, size)
    n = c_recv(fd, <char *>data, <size_t>size, MSG_DONTWAIT)
    result[0] = n if n >= 0 else -errno
    if n <= 0:
        return None
    if n == size:
        return data
    raw = <PyObject *>data
    Py_INCREF(data)                 # `raw` owns a reference of its own, and then the only one
    data = None
    return _cut_bytes(raw, n)


cdef inline int _large_read_size(int size, Py_ssize_t res):
    """The buffer for a connection's next large read, after one that returned `res` bytes
    into `size`: room for twice the largest recent read, in whole pages, up to LARGE_READ_MAX.
    Growing fast and never shrinking (until the reads turn small and the connection goes back
    to the ring) keeps a stream that arrives in pieces of varying size at one receive each."""
    cdef Py_ssize_t want = (2 * res + 4095) & ~<Py_ssize_t>4095
    if want > LARGE_READ_MAX:
        want = LARGE_READ_MAX
    return <int>want if want > size else size


cdef inline int _stream_read_guess(Py_ssize_t took):
    """How far recv_into_stream_reader() grows a StreamReader's buffer for the next read,
    after reads that took `took` bytes: that much and 32 bytes more, up to LARGE_READ_MAX.
    The 32 bytes make the buffer's allocation (the bytes and bytearray's trailing NUL) exactly
    that of the bytes object read() then copies them into -- the header of bytes, 33 bytes,
    and the NUL -- so that malloc() gives one's freed memory to the other.  A larger margin
    did not: with the buffer grown by a quarter more, in whole pages, the two sizes no
    longer fitted each other's freed chunks, and at streams 16 KiB x 1000 the heap's top
    was trimmed and grown again (~40,000 page faults a second in one run of two)."""
    cdef Py_ssize_t want = took + 32
    return <int>(want if want < LARGE_READ_MAX else LARGE_READ_MAX)


cdef object _EOF = object()          # stash_end marker: the peer closed its side


cdef BufferRing receive_buffers(loop, Proactor proactor):
    """The loop's provided-buffer ring for multishot receives (created on first use), or None
    when the kernel has no multishot receive.

    Buffers are held only while one batch of completions is copied out (each is given back at
    once and republished after the batch), so an idle connection holds no receive memory, the
    ring's capacity bounds what all connections together can receive in one loop iteration
    (beyond it a receive ends with -ENOBUFS and is re-armed for the next one), and the buffer
    size bounds one data_received() chunk.

    Where the kernel consumes buffers incrementally (6.12) the ring starts as 2 x 32 KiB: a
    1 KiB message takes 1 KiB of a buffer, so even two small buffers hold dozens of small
    receives per iteration, and the ring grows when a batch needs more (below).  The size is
    set by memory: the kernel cycles through every buffer in circulation, so all of them end up
    in the process's memory after a while of load.  The ring used to start as 4 x 1 MiB,
    because a receive never spans two buffers (where the current one has less room left than
    the socket holds, the bytes arrive in two completions) and with 32 x 128 KiB, 100 KiB
    messages were split that way more often than not.  Since large reads leave the ring (see
    recv_done and poll_done), the buffer size no longer bounds
    bulk transfers, only the first read that starts them; 2 x 32 KiB measured the same as
    4 x 1 MiB at Protocol echo 1 KiB x 100/1000, 16 KiB x 100/1000 and 100 KiB x 10 (five
    alternating runs each, medians within the machine's noise) while the server's RSS after 1M
    1 KiB requests over 10 connections dropped by 4 MiB, to uvloop's (24.23 against 24.25 MB,
    Python 3.10; 4 x 64 KiB left it 0.25 MiB above).  Elsewhere every completion takes a whole
    buffer, and 256 x 16 KiB (4 MiB) is the compromise between small and bulk receives.

    When many connections move large messages, the buffers are spent within one batch of
    completions and receives end with -ENOBUFS.  The ring then doubles the buffers in
    circulation (once per batch, up to 32 MiB: BufferRing.grow) and the receives are re-armed
    on it.  Before it could grow, 1000 connections echoing 16 KiB met the dry ring on ~3 of 4
    requests: each cost a wasted completion, a receive into a 256 KiB buffer of the
    connection's own and a second re-arm (perf trace; 0.59x uvloop there).  The pool is mapped
    for the full capacity but takes memory only as the kernel writes into it, so a loop holds
    only what its busiest batch needed.  Beyond the capacity, a connection that meets
    the dry ring makes its next receive into a buffer of its own (see recv_done)."""
    ring = loop._ul_recv_ring
    if ring is None:
        ring = False
        if loop._features.get('multishot_recv'):
            if loop._features.get('incremental_buffers'):
                try:
                    ring = proactor.new_buffer_ring(INC_BUFFER_COUNT, INC_BUFFER_SIZE, True,
                                                    INC_BUFFER_CAPACITY)
                except (OSError, MemoryError):
                    ring = False
            if ring is False:
                try:
                    ring = proactor.new_buffer_ring(RECV_BUFFER_COUNT, RECV_BUFFER_SIZE,
                                                    False, RECV_BUFFER_CAPACITY)
                except (OSError, MemoryError):
                    ring = False
        loop._ul_recv_ring = ring
    if ring is False:
        return None
    return <BufferRing>ring


cdef class ReceiveSide(SendSide):
    """What SocketTransport does to receive (see the module's docstring).  Not used on its
    own: close() and the fatal errors are the transport's."""

    cdef int note_protocol(self, object protocol) except -1:
        """set_protocol(): how the new protocol is fed (and the receive in flight for the
        previous kind ended)."""
        self.buffered = isinstance(protocol, _BufferedProtocol)
        # A protocol of the loop's own whose buffer_updated() has taken the bytes by the time
        # it returns (the compiled TLS layer): its buffer may be filled again in the same batch.
        self.refills_at_once = self.buffered and getattr(type(protocol),
                                                         '_ul_takes_bytes_at_once', False)
        self.feeds_stream_reader = (
            type(protocol) is _StreamReaderProtocol
            and getattr(getattr(protocol, 'data_received', None), '__func__', None)
            is _stock_srp_data_received)
        # (Every kind of protocol is fed by the same receives -- into the loop's buffers, or
        # a poll for large reads -- so the receive in flight goes on for the new one.)
        return 0

    cdef bint receive_pending(self) noexcept:
        return self.recv_op is not None and not self._paused

    def is_reading(self):
        return not self._closing and not self._paused

    def pause_reading(self):
        if self._closing or self._paused:
            return
        self._paused = True
        self.stash_after_pass = False       # (withdrawn: see schedule_stash_after_ready_pass)
        if self.recv_op is not None:
            self.recv_op.cancel()
        if self.loop.get_debug():
            logger.debug("%r pauses reading", self)

    def resume_reading(self):
        if self._closing or not self._paused:
            return
        self._paused = False
        self.stopped_at_eof = False
        if self.stash or self.stash_end is not None:
            self.schedule_stash_after_ready_pass()
        elif self.reading_started:
            # (Arming asks nothing of the protocol: a BufferedProtocol's get_buffer() is called
            # when bytes are there to go into it -- see deliver_buffered.)
            if self.recv_op is None:
                self.note_read_from_ready_pass()
            self.arm_receive()
        if self.loop.get_debug():
            logger.debug("%r resumes reading", self)

    def _start_reading(self):
        # Queued right behind connection_made(); the first receive is armed one pass of the
        # ready queue later still.  Why: whatever connection_made() schedules -- the first step
        # of start_server's handler task, the wake-up of the task awaiting open_connection() --
        # runs on the stock loop before the first data_received(): its reader is polled only in
        # the next iteration, and the read callback queued behind them.  Our completions call
        # the protocol straight from the iteration that armed the receive, so data already
        # waiting in the socket overtook them: a handler that paused reading or began
        # start_tls() at once found the peer's first bytes (its TLS ClientHello) already fed
        # to its StreamReader, and the handshake never completed.
        self.loop.call_soon(self._arm_first_receive)

    def _take_leftover(self, leftover, exc):
        """sock_*'s last receive on the socket has ended (see SocketTransport.setup): its bytes,
        and the error it took from the socket, come before anything the transport receives."""
        self.awaiting_leftover = False
        if self.sock is None or self._closing:
            return
        if leftover is not None:
            if self.stash is None:
                self.stash = []
            self.stash.insert(0, leftover)
        if exc is not None and self.stash_end is None:
            self.stash_end = exc
        if self.reading_started:
            self.start_receiving()

    def _arm_first_receive(self):
        self.reading_started = True
        self.start_receiving()

    cdef int start_receiving(self) except -1:
        """What the transport holds goes first (the stash delivery arms the receive after it),
        else the receive is armed -- unless closing or paused."""
        if self.stash or self.stash_end is not None:
            self.schedule_stash()
        elif not self._closing and not self._paused:
            self.arm_receive_in_context()
        return 0

    cdef int arm_receive_in_context(self) except -1:
        # Outside a completion (from the ready queue): get_buffer() and anything arming calls
        # run in the transport's context, as its completions' callbacks do.
        self.enter_context()
        try:
            self.arm_receive()
        finally:
            self.exit_context()
        return 0

    cdef int schedule_stash(self) except -1:
        if not self.stash_scheduled and not self.stash_after_pass:
            self.stash_scheduled = True
            self.loop.call_soon(self._deliver_stash)
        return 0

    cdef int schedule_stash_after_ready_pass(self, bint one_iteration_later=False) except -1:
        # What completed while reading was paused is delivered after resume_reading() where the
        # stock loop would read it: its reader, registered again, is polled once the ready
        # callbacks have all run, and its callback queued behind everything they queued.
        # Scheduled at once (call_soon), the delivery ran ahead of what the caller queued after
        # resume_reading() -- uvicorn resumes reading when a response is complete, then creates
        # the task for the next pipelined request: the client's EOF, stashed while paused,
        # closed the transport before that task's first step could write its response (logged
        # as sent, never received).  A delivery queued before resume_reading() (an EOF that
        # completes while paused schedules one) stands down for this one (_deliver_stash); and
        # a pause_reading() before this one runs withdraws it (as the stock reader removed
        # before the poll reads nothing), so that the next resume_reading() -- after which
        # uvicorn creates the next request's task -- is the one it follows (stash_ticket).
        # (`one_iteration_later`: an EOF behind bytes that came a pass early, see got_eof.)
        if not self.stash_after_pass:
            self.stash_after_pass = True
            self.stash_ticket += 1
            (self.proactor.after_next_ready_pass if one_iteration_later
             else self.proactor.after_ready_pass).append(
                (self._deliver_stash_after_pass, self.stash_ticket))
        return 0

    def _deliver_stash(self):
        self.stash_scheduled = False
        if not self.stash_after_pass:
            self.deliver_stash()

    def _deliver_stash_after_pass(self, unsigned ticket):
        # (A _deliver_stash queued before this one has run by now, and stood down.)
        if self.stash_after_pass and ticket == self.stash_ticket:
            self.stash_after_pass = False
            self.deliver_stash()

    cdef int note_read_from_ready_pass(self) except -1:
        """The transport reads from the ready callbacks an iteration runs before its enter --
        stashed bytes delivered, or a receive armed that the enter completes -- where the stock
        loop reads at its next poll, after them (see got_eof)."""
        if self.proactor.ready_pass_batch:
            self.ready_read_batch = <unsigned>self.proactor.ready_pass_batch
        return 0

    cdef int deliver_stash(self) except -1:
        # Bytes that completed while reading was paused, then what ended them, then new reads.
        self.note_read_from_ready_pass()
        if self.buffered:
            # Filled from the ready queue: what buffer_updated() schedules now runs in the next
            # pass, which comes after the next batch of completions -- so no receive of that
            # batch may fill the buffer before it (got_data, poll_done).
            self.filled_in_batch = self.proactor.batches + 1
        self.enter_context()
        try:
            if self.buffered and self.stash and not self._paused and not self._closing:
                # One get_buffer() filled from the stash, as one recv_into() of the stock
                # reader's takes what the socket holds; the rest, and what ended the bytes,
                # from the next pass (fill_protocol_buffer schedules it).
                try:
                    self.fill_protocol_buffer()
                except BaseException:
                    if self.stash or self.stash_end is not None:
                        self.schedule_stash()
                    raise
                if self._paused or self._closing or self.stash_scheduled:
                    return 0
                if self.stash_end is not None:
                    self.schedule_stash()
                elif self.reading_started:
                    self.arm_receive()
                return 0
            while self.stash and not self._paused and not self._closing:
                try:
                    self.deliver(self.stash.pop(0))
                except BaseException:
                    # KeyboardInterrupt or SystemExit from the protocol: the rest, and reading,
                    # go on in a later pass if the loop runs again (see got_data_or_interrupt).
                    self.schedule_stash()
                    raise
                if self.stash_scheduled:
                    return 0    # a BufferedProtocol's buffer was filled: the rest next pass
            if self._paused or self._closing:
                return 0
            end = self.stash_end
            if end is not None:
                self.stash_end = None
                self.got_end(end)
            elif self.reading_started:
                self.arm_receive()
        finally:
            self.exit_context()
        return 0

    cdef int arm_receive(self) except -1:
        cdef RecvOp op
        cdef MultishotRecvOp ms
        cdef PollOp poll
        if self.recv_op is not None or self.proactor.closing or self.socket_gone():
            return 0          # one in flight (maybe being cancelled): its final CQE re-arms
        if self.awaiting_leftover:
            return 0          # sock_*'s receive is still in the kernel (_take_leftover arms)
        if self.large_read_size and not self.ring_dry:
            # Large reads, for a Protocol and a BufferedProtocol alike: wait for readiness,
            # receive inline (module docstring, poll_done).
            poll = self.poll_op
            if poll is None:
                poll = self.poll_op = PollOp(self.proactor, self, self._sock_fd, self.sock)
                poll.events = POLLIN
                poll.guards_fd = self.guards_fd
            poll.keep = self.sock
            self.recv_op = poll
            poll.submit()
        elif self.bufs is not None and not self.ring_dry:
            ms = self.ms_op
            if ms is None:
                ms = self.ms_op = MultishotRecvOp(self.proactor, self, self._sock_fd, self.sock)
                ms.guards_fd = self.guards_fd
                ms.bufs = self.bufs
            ms.keep = self.sock
            self.recv_op = ms
            ms.submit()
        else:
            op = self.single_op
            if op is None:
                op = self.single_op = RecvOp(self.proactor, self, self._sock_fd, self.sock)
                op.guards_fd = self.guards_fd
            # Also where the shared ring ran dry for this connection (see recv_done): one
            # receive into a buffer of its own, then back to the ring.
            op.set_buffer(PyBytes_FromStringAndSize(
                NULL, DRY_RING_RECV_SIZE if self.ring_dry else FALLBACK_RECV_SIZE), False)
            self.ring_dry = False
            op.keep = self.sock
            self.recv_op = op
            op.submit()
        return 0

    cdef int stop_receive(self) except -1:
        if self.recv_op is not None:
            self.recv_op.cancel()
        self.stash = None
        self.stash_end = None
        return 0

    cdef int enter_context(self) except -1:
        # Completions are dispatched outside of any context; protocol callbacks run in the one
        # the transport was made in.  Entries nest (a cancelled operation that never reached the
        # kernel completes synchronously, from inside a callback), the context is entered once.
        if self.context_depth == 0:
            PyContext_Enter(self.context)
        self.context_depth += 1
        return 0

    cdef int exit_context(self) except -1:
        self.context_depth -= 1
        if self.context_depth == 0:
            PyContext_Exit(self.context)
        return 0

    cdef int recv_done(self, Operation op, int res, unsigned flags) except -1:
        cdef bint final = not (flags & IORING_CQE_F_MORE)
        cdef unsigned bid
        cdef object data = None
        cdef object reader = None         # a StreamReader the bytes went into already
        cdef bint gone
        if final:
            self.recv_op = None
        # A receive in the kernel holds the socket's file, so one armed before the socket's
        # owner closed it (a sock= argument) goes on receiving -- and, multishot, would go on
        # for good: bytes the peer sent after the close reached the protocol, and the peer
        # never saw the close.  The stock transport's reader went with the closed descriptor.
        # What such a receive brings is dropped and the transport ends with EBADF, as its
        # re-arm would end it (socket_gone), which cancels the receive and lets the file go.
        gone = (res != -ECANCELED and not self._closing and self.sock is not None
                and not self.proactor.closing and self.socket_gone())
        if res > 0:
            self.bytes_batch = <unsigned>self.proactor.batches
        if op is self.ms_op:
            if flags & IORING_CQE_F_BUFFER:
                bid = flags >> IORING_CQE_BUFFER_SHIFT
                try:
                    if res > 0 and not gone:
                        if self.feeds_stream_reader:
                            reader = self.copy_into_stream_reader(self.bufs.data(bid), res)
                        if reader is None:
                            data = PyBytes_FromStringAndSize(self.bufs.data(bid), res)
                        if res >= LARGE_READ_FROM and not final and self.large_read_size == 0:
                            # Large reads: end the multishot receive; its final completion
                            # re-arms the connection with a poll (see poll_done).
                            self.large_read_size = _large_read_size(0, res)
                            op.cancel()
                finally:
                    # (Also when the copy failed -- MemoryError, see SocketTransport.op_done:
                    # the buffer goes back to the ring all the same.)
                    self.bufs.consumed(bid, res if res > 0 else 0, flags)
            elif res == -ENOBUFS and not self.bufs.grow():
                # The loop's ring had no buffer left (the bytes wait in the socket) and has
                # grown as far as it may.  Re-arming the multishot receive at once would mostly
                # meet an empty ring again -- the ring's capacity is spent within one batch of
                # completions, and each retry costs a completion and a submission per
                # connection.  This connection's next receive brings its own buffer.
                self.ring_dry = True
        elif res > 0 and not gone:
            data = _received_bytes(<RecvOp>op, res)

        if gone:
            return 0
        if reader is not None:
            self.stream_reader_fed(reader, final)
        elif self.sock is None or self.proactor.closing:
            return 0          # connection_lost already ran, or the loop is closing
        elif res > 0:
            self.got_data_or_interrupt(data, final)
        elif res == 0:
            return self.got_eof()
        elif res == -ECANCELED or res == -ENOBUFS:
            pass              # paused/closed, or the ring ran dry: re-armed below if wanted
        else:
            self.got_end(os_error(-res))
            return 0
        if final:
            self.rearm_if_reading()
        return 0

    cdef int poll_done(self, int res) except -1:
        """The poll of a connection in large reads completed: receive what is there with one
        non-blocking recv(2) and hand it to the protocol now, while the bytes are in the CPU's
        cache (see the module's docstring).  Nothing is read while paused or closing: the bytes
        wait in the socket, and the poll that resume_reading() arms finds them.  The bytes read
        here are not counted in the WaitPolicy's batch_bytes, which sizes batched waits by what
        the kernel copies in before the loop sees any of it -- here, nothing."""
        cdef ssize_t n
        cdef int taken
        self.recv_op = None
        if self.sock is None or self.proactor.closing:
            return 0          # connection_lost already ran, or the loop is closing
        if res < 0 and res != -ECANCELED:
            self.got_end(os_error(-res))
            return 0
        if res > 0 and self.socket_gone():
            return 0
        if res > 0 and self.buffered and not self._closing and not self._paused and not self.stash:
            if self.filled_in_batch == self.proactor.batches and not self.refills_at_once:
                # The buffer was filled from the ready queue's last pass, whose callbacks have
                # not run yet (see got_data): wait for readiness once more -- the poll, armed
                # again, completes at the next enter, after them.
                return self.rearm_if_reading()
            self.filled_in_batch = self.proactor.batches
            return self.recv_into_protocol()
        if res > 0 and not self._closing and not self._paused and not self.stash:
            if self.feeds_stream_reader:
                taken = self.recv_into_stream_reader()
                if taken == 2:
                    return 0          # no bytes: inline_read_ended() did what follows
                if taken:
                    return self.rearm_if_reading()
            # Readable, or an error or hang-up is pending: the recv(2) tells which.  (Never a
            # read of 0 bytes, whose 0 would look like the EOF.)
            data = _recv_inline(self._sock_fd, self.large_read_size or LARGE_READ_MAX, &n)
            if data is None:
                return self.inline_read_ended(n)
            self.large_read_size = (0 if n < LARGE_READ_UNTIL
                                    else _large_read_size(self.large_read_size, n))
            self.got_data_or_interrupt(data, True)
        return self.rearm_if_reading()

    cdef int inline_read_ended(self, ssize_t n) except -1:
        """After an inline recv(2) of large reads that brought no bytes (`n`: 0 or -errno):
        the EOF, the socket's error, or nothing after all (EAGAIN, EINTR) -- then the poll is
        armed again."""
        if n == 0:
            return self.got_eof()
        if n != -EAGAIN and n != -EINTR:
            self.got_end(os_error(<int>-n))
            return 0
        return self.rearm_if_reading()

    cdef object protocol_buffer(self):
        """A BufferedProtocol's get_buffer(-1), checked as the stock transport checks it: None
        after a failure, reported as a fatal error with the stock message.  KeyboardInterrupt
        and SystemExit go through."""
        try:
            buf = self.protocol.get_buffer(-1)
            if not len(buf):
                raise RuntimeError('get_buffer() returned an empty buffer')
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self.fatal_error(exc, 'Fatal error: protocol.get_buffer() call failed.')
            return None
        return buf

    cdef bint protocol_view(self, Py_buffer *view) except -1:
        """A writable view of get_buffer()'s buffer, for bytes read or copied into it here
        (recv_into_protocol, deliver_buffered); the caller releases it.  False after a failure,
        reported as the stock transport reports it: get_buffer()'s (protocol_buffer), or a
        buffer that cannot be written -- the stock transport's recv_into() failing: TypeError,
        a fatal read error."""
        buf = self.protocol_buffer()
        if buf is None:
            return False
        try:
            get_writable_buffer(buf, view)
        except (TypeError, BufferError):
            self.fatal_error(unwritable_buffer_error(buf, 'recv_into'),
                             'Fatal read error on socket transport')
            return False
        except Exception as exc:
            self.fatal_error(exc, 'Fatal read error on socket transport')
            return False
        if view.len == 0:
            # len() said otherwise (a view whose items are of size 0): nothing can be put in
            # it, and a read into it would look like the peer's EOF.
            PyBuffer_Release(view)
            self.fatal_error(RuntimeError('get_buffer() returned an empty buffer'),
                             'Fatal error: protocol.get_buffer() call failed.')
            return False
        return True

    cdef bint buffer_updated(self, Py_ssize_t n) except -1:
        """protocol.buffer_updated(n); False after it failed (a fatal error, as stock).  Before
        KeyboardInterrupt or SystemExit go, the next receive is armed (got_data_or_interrupt)."""
        try:
            self.protocol.buffer_updated(n)
        except (SystemExit, KeyboardInterrupt):
            self.rearm_if_reading()
            raise
        except BaseException as exc:
            self.fatal_error(exc, 'Fatal error: protocol.buffer_updated() call failed.')
            return False
        return True

    cdef int recv_into_protocol(self) except -1:
        """A BufferedProtocol's large reads (the module's docstring): the poll completed, so
        receive into get_buffer()'s buffer with one non-blocking recv(2) and hand it to
        buffer_updated() at once -- one read per poll, as the stock reader reads once per
        iteration: a protocol that leaves the bytes in its buffer for a callback of its own to
        take finds them there.  (Reading again at once while a read filled the buffer, up to 4
        times, libuv's way, overwrote them, and measured no faster: see the README's levers.)
        Failures are the stock transport's: get_buffer() and buffer_updated() errors are fatal
        with their messages, a read-only buffer is a fatal read error (TypeError, as
        recv_into raises)."""
        cdef Py_buffer view
        cdef ssize_t n
        try:
            if not self.protocol_view(&view):
                return 0
        except BaseException:       # KeyboardInterrupt, SystemExit: see got_data_or_interrupt
            self.rearm_if_reading()
            raise
        n = c_recv(self._sock_fd, view.buf, <size_t>view.len, MSG_DONTWAIT)
        if n < 0:
            n = -errno
        PyBuffer_Release(&view)
        if n <= 0:
            if n != -EAGAIN and n != -EINTR:
                self.end_buffer_asked = True  # the EOF or error: got_end asks no buffer again
            return self.inline_read_ended(n)
        if n < LARGE_READ_UNTIL:
            self.large_read_size = 0
        if not self.buffer_updated(n):
            return 0
        return self.rearm_if_reading()

    cdef int got_data_or_interrupt(self, object data, bint rearm) except -1:
        """got_data(), for a completion after which reading is re-armed (`rearm`): when the
        protocol raises KeyboardInterrupt or SystemExit (they leave the loop, unlike its other
        exceptions), the next receive is armed before they go.  The stock loop's reader stays
        registered through them, and a loop run again after the interrupt reads on; without
        this the connection would never be read again."""
        try:
            return self.got_data(data)
        except BaseException:
            if rearm:
                self.rearm_if_reading()
            raise

    cdef int rearm_if_reading(self) except -1:
        """After a receive's final completion: the next one, unless one is armed already or
        reading stopped (paused, closing, not started yet, or stashed bytes still to deliver)."""
        if (self.recv_op is None and not self._closing and not self._paused
                and self.reading_started and not self.stash and not self.stopped_at_eof):
            self.arm_receive()
        return 0

    cdef int got_eof(self) except -1:
        # Where eof_received() goes among the callbacks.  The stock loop learns of the EOF from
        # a recv() of its own, in the readiness round *after* the one that read the last bytes:
        # its read callback is queued by that next poll, so eof_received() runs after what the
        # callbacks data_received() queued did -- hop 1 of a call_soon() chain it started --
        # and before what those queue in turn (hop 2).  The kernel, though, may complete the
        # EOF in the same batch as the bytes (a multishot receive's last two completions); one
        # of our iterations -- ready callbacks, enter, completions, timers -- then stands for
        # the stock round that read the bytes, and the EOF waits for the end of it
        # (after_ready_pass: queued behind everything the iteration queued), which is where
        # the stock loop's next poll puts it.  A pass later, aiohttp and gunicorn answered a
        # request whose client had shut its side where the stock loop and uvloop close without
        # answering; a pass sooner, a task woken in that pass found the transport closed where
        # the stock one was open (both found by differential fuzzers).
        #
        # An EOF in a batch of its own waits for the end of the iteration too.  Delivered at
        # once it would be right for a FIN that was in the socket before this iteration's
        # ready callbacks ran (one a protocol's callback caused in the last iteration's
        # completions, say), but a FIN those ready callbacks caused -- a peer in this process
        # shutting its side from a task or a call_soon() callback -- reaches our enter, which
        # follows them, where the stock loop sees it only at its next poll.  Which of the two
        # it was cannot be told from the completion, so the EOF takes the later place: a pass
        # late is what a slower network gives on any loop, a pass early is an order the stock
        # loop never has (a differential fuzzer found both kinds of peer; uvloop, which polls
        # before its callbacks as the stock loop does, matches it in both).
        #
        # One iteration later still when a ready callback of this iteration read for the
        # transport (resume_reading() armed the receive, or the stash was delivered:
        # note_read_from_ready_pass) and the receive brought bytes with the EOF: the stock
        # loop reads at the poll after those callbacks, so those bytes came a round early
        # (README: a receive armed from the ready callbacks completes in the same iteration),
        # and the EOF keeps its round after them.
        #
        # Paused, the EOF waits behind what was stashed, and resume_reading() schedules its
        # delivery: one scheduled now would run in the pass that resumes reading when it is
        # queued ahead of resume_reading()'s caller -- behind it, eof_received() overtook what
        # the pass before the resume had queued, where the stock loop reads the EOF at the poll
        # after that pass (found by a differential fuzzer).  Not again for a receive that ends
        # after eof_received() kept the connection open (on_eof).
        cdef unsigned batch = <unsigned>self.proactor.batches
        if not self._closing and not self.stopped_at_eof:
            self.stash_end = _EOF
            if not self._paused:
                self.schedule_stash_after_ready_pass(
                    self.ready_read_batch == batch and self.bytes_batch == batch)
        return 0

    cdef int recv_into_stream_reader(self) except -1:
        """A large read for asyncio's StreamReaderProtocol, received with non-blocking recv(2)
        straight into the end of its StreamReader's buffer.  Returns 1 when it took bytes, 2
        when the recv(2) brought none (inline_read_ended() has run: the EOF, the socket's
        error, or nothing after all), 0 when the ordinary inline read must run: the reader is
        gone, subclassed, at EOF, or its buffer cannot grow.

        Why: data_received() would hand the bytes to feed_data(), whose first act is to copy
        them onto the end of that same bytearray -- at streams 100 KiB echo a 100 KiB copy,
        and a 100 KiB object allocated and freed, per message, on top of the copy out again
        that read() makes."""
        cdef ssize_t n
        cdef int err
        cdef Py_ssize_t old, size, total = 0
        cdef int waiting = 0
        cdef bint asked = False
        reader = _feedable_reader(self.protocol)
        if reader is None:
            return 0          # feed_data() itself then runs, or asserts, as on the stock loop
        # How far to grow the buffer for the read.  Not by the read's whole size: growing a
        # connection's bytearray by up to 124 KiB and cutting it back after every read
        # fragmented the heap at streams 16 KiB x 1000 (6.7 page faults per request against
        # 0.2; 0.65x uvloop in a full run) -- bytearray gives the memory back (realloc) when
        # the bytes take less than half of it.  By what FIONREAD says is waiting, the first
        # time: exact, but an ioctl(2) for every read (~0.4 us of ~14 per request at streams
        # 16 KiB x 100, a third of the server's system calls).  After that, by what the last
        # read took and a little more (_stream_read_guess): the peer of a stream sends
        # messages of a size, so the next read takes as much and does not fill it -- nothing
        # can have been left behind.  A read that fills it asks FIONREAD then, and reads what
        # is left at once.
        size = self.stream_read_guess
        if size == 0:
            if c_ioctl_int(self._sock_fd, FIONREAD, &waiting) < 0 or waiting <= 0:
                return 0      # nothing waiting (an EOF or error pending): the ordinary read tells
            size = self.large_read_size or LARGE_READ_MAX
            if waiting < size:
                size = waiting
            asked = True
        buf = reader._buffer
        while True:
            old = PyByteArray_GET_SIZE(buf)
            try:
                PyByteArray_Resize(buf, old + size)
            except BufferError:
                if total:
                    break
                return 0      # a view of the buffer is held: extend() in feed_data() says so
            n = c_recv(self._sock_fd, PyByteArray_AS_STRING(buf) + old, <size_t>size,
                       MSG_DONTWAIT)
            err = errno
            PyByteArray_Resize(buf, old + (n if n > 0 else 0))
            if n <= 0:
                if total:
                    break     # the bytes read go up; the re-armed poll finds what ended it
                self.inline_read_ended(n if n == 0 else -err)
                return 2
            total += n
            if n < size or asked:
                break
            # The guess was filled: more may be waiting.
            if c_ioctl_int(self._sock_fd, FIONREAD, &waiting) < 0 or waiting <= 0:
                break
            size = waiting if waiting < LARGE_READ_MAX else LARGE_READ_MAX
            asked = True
        self.stream_read_guess = _stream_read_guess(total)
        self.large_read_size = (0 if total < LARGE_READ_UNTIL
                                else _large_read_size(self.large_read_size, total))
        self.stream_reader_fed(reader, True)
        return 1

    cdef object copy_into_stream_reader(self, const char *src, Py_ssize_t n):
        """A receive's `n` bytes from the provided-buffer ring, for asyncio's
        StreamReaderProtocol: copied straight onto the end of its StreamReader's buffer (what
        feed_data() would do with the bytes object data_received() got), when nothing holds
        delivery back.  Returns the reader, for stream_reader_fed() once the ring buffer is
        given back; None when the ordinary delivery must run.  Never raises: a failure here
        leaves the bytes to that delivery, where feed_data() meets it as on the stock loop."""
        cdef Py_ssize_t old
        if (self._closing or self._paused or self.stash or self.sock is None
                or self.proactor.closing):
            return None
        try:
            reader = _feedable_reader(self.protocol)
            if reader is None:
                return None
            buf = reader._buffer
            old = PyByteArray_GET_SIZE(buf)
            PyByteArray_Resize(buf, old + n)
        except BaseException:
            return None
        memcpy(PyByteArray_AS_STRING(buf) + old, src, <size_t>n)
        return reader

    cdef int stream_reader_fed(self, object reader, bint rearm) except -1:
        """What feed_data() does after it has added bytes to the buffer (CPython 3.10-3.13
        alike): wake a read() waiting for data, and pause the transport once the buffer holds
        more than twice the reader's limit.  An exception from those is the protocol's,
        reported as data_received()'s would be; before KeyboardInterrupt or SystemExit go, the
        next receive is armed if `rearm` (got_data_or_interrupt)."""
        try:
            if _stock_stream_reader_method(_NAME_WAKEUP_WAITER, _stock_wakeup_waiter):
                # StreamReader._wakeup_waiter() (the same in CPython 3.10-3.13), inline: one
                # Python frame less for every receive a read() waits for.
                waiter = reader._waiter
                if waiter is not None:
                    reader._waiter = None
                    if type(waiter) is _CFuture:
                        if not _future_cancelled(waiter):
                            _future_set_result(waiter, None)
                    elif not waiter.cancelled():
                        waiter.set_result(None)
            else:
                reader._wakeup_waiter()
            if (reader._transport is not None and not reader._paused
                    and _above_twice(PyByteArray_GET_SIZE(reader._buffer), reader._limit)):
                try:
                    reader._transport.pause_reading()
                except NotImplementedError:
                    reader._transport = None
                else:
                    reader._paused = True
        except (SystemExit, KeyboardInterrupt):
            if rearm:
                self.rearm_if_reading()
            raise
        except BaseException as exc:
            self.fatal_error(exc, 'Fatal error: protocol.data_received() call failed.')
        return 0

    cdef int got_data(self, object data) except -1:
        if self._closing:
            # Reading stopped at close(), as stock.  (The stock loop would have left these
            # bytes in the socket, if they came after its last read -- and its close would
            # then reset the connection -- or read them with the bytes before, up to 256 KiB
            # at once, and closed cleanly.  Which of the two cannot be told from here, and a
            # reset also throws away what the close had still to send: the close stays clean.)
            return 0
        if self._paused or self.stash:
            if self.stash is None:
                self.stash = []
            self.stash.append(data)
            return 0
        if self.buffered and not self.refills_at_once:
            if self.filled_in_batch == self.proactor.batches:
                # The protocol's buffer was filled once since the ready queue's last pass (by
                # a receive of this batch, or from that pass itself: _deliver_stash), and its
                # buffer_updated() may have left the bytes in it for a callback to take (as
                # the stock loop, reading once per iteration, allows).  These go into it from
                # the next pass, after those callbacks, with whatever else arrives meanwhile.
                self.stash = [data]
                self.schedule_stash()
                return 0
            self.filled_in_batch = self.proactor.batches
        return self.deliver(data)

    cdef int got_end(self, object end) except -1:
        cdef Py_buffer view
        if self._closing:
            return 0
        if self._paused or self.stash:
            self.stash_end = end
            return 0
        if self.buffered and not self.end_buffer_asked:
            # The stock reader learns of the EOF or the error from a recv_into() into the
            # buffer it has just asked for: get_buffer() is called (and may fail) first.
            try:
                if not self.protocol_view(&view):
                    return 0
            except BaseException:
                self.stash_end = end          # KeyboardInterrupt, SystemExit: for the next run
                self.schedule_stash()
                raise
            PyBuffer_Release(&view)
        self.end_buffer_asked = False
        if end is _EOF:
            return self.on_eof()
        return self.fatal_error(end, 'Fatal read error on socket transport')

    cdef int deliver(self, object data) except -1:
        if self.buffered:
            return self.deliver_buffered(data)
        try:
            self.protocol.data_received(data)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self.fatal_error(exc, 'Fatal error: protocol.data_received() call failed.')
        return 0

    cdef int deliver_buffered(self, object data) except -1:
        """Bytes received for a BufferedProtocol (nothing stashed before them): handed over as
        the stock transport's reader does it, by fill_protocol_buffer().

        Why the loop's buffers and a copy, not the protocol's buffer lent to the kernel: a
        receive lent that buffer from its arming until bytes came -- a get_buffer() called
        before anything had arrived, on an idle connection (a failing one killed the
        connection; the stock loop never asks), a bytearray that could not be resized while
        lent (BufferError), and a buffer replaced between reads that the kernel still wrote
        into -- the protocol then read its new buffer and found zeros.  The stock loop, and
        uvloop, ask for the buffer when the bytes are there; so does this.  Large reads go
        into the buffer directly, on readiness (recv_into_protocol)."""
        if self.stash is None:
            self.stash = []
        self.stash.insert(0, data)
        try:
            return self.fill_protocol_buffer()
        except BaseException:
            # KeyboardInterrupt or SystemExit: what was not delivered goes on in a later pass
            # if the loop runs again (see got_data_or_interrupt).
            if self.stash and not self._paused:
                self.schedule_stash()
            raise

    cdef int fill_protocol_buffer(self) except -1:
        """get_buffer(-1), as many of the stash's bytes copied into it, in order, as it takes,
        then buffer_updated() with that count -- once, as the stock reader's recv_into() takes
        what the socket holds up to the buffer's size.  What does not fit stays in the stash
        for the next pass of the ready queue, scheduled after whatever buffer_updated()
        scheduled (the stock reader's next read comes with the next iteration, after those
        callbacks), and the receive in flight is stopped meanwhile, so that a protocol taking
        less than arrives leaves the rest in the socket, as on the stock loop, rather than in
        the stash.  Nothing is lost to an exception: bytes leave the stash only once copied."""
        cdef Py_buffer view
        cdef Py_ssize_t room, total = 0, n, k
        cdef list stash = self.stash
        if not self.protocol_view(&view):
            return 0          # a fatal error (the stash went with the close)
        room = view.len
        try:
            while stash and total < room:
                item = stash[0]
                n = PyBytes_GET_SIZE(item)
                k = room - total
                if k > n:
                    k = n
                memcpy(<char *>view.buf + total, <char *>item, <size_t>k)
                total += k
                if k < n:
                    stash[0] = item[k:]
                else:
                    del stash[0]
        finally:
            PyBuffer_Release(&view)
        if stash and self.recv_op is not None and self.recv_op is not self.poll_op:
            self.recv_op.cancel()
        try:
            self.protocol.buffer_updated(total)
        except (SystemExit, KeyboardInterrupt):
            if self.stash and not self._paused:
                self.schedule_stash()
            raise
        except BaseException as exc:
            self.fatal_error(exc, 'Fatal error: protocol.buffer_updated() call failed.')
            return 0
        if self.stash and not self._paused and not self._closing:
            self.schedule_stash()
        return 0

    cdef int on_eof(self) except -1:
        if self.loop.get_debug():
            logger.debug("%r received EOF", self)
        try:
            keep_open = self.protocol.eof_received()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self.fatal_error(exc, 'Fatal error: protocol.eof_received() call failed.')
            return 0
        if not keep_open:
            self.close()
        else:
            # Kept open, for the protocol to write: reading stops here, as the stock transport
            # removes its reader -- also a receive that a pause_reading()/resume_reading() inside
            # eof_received() armed, which would only find the EOF again and call
            # eof_received() again, without end.  A later resume_reading() reads again (and
            # finds the EOF once more), as the stock loop's adds its reader back.
            self.stopped_at_eof = True
            if self.recv_op is not None:
                self.recv_op.cancel()
        return 0

    @property
    def _ul_large_read_size(self):
        # For tests: the buffer of the next large read; 0 while reading from the ring.
        return self.large_read_size

    @property
    def _ul_receive_holds_buffer(self):
        # For tests: whether the receive in flight holds a buffer of this connection's own (a
        # single-shot receive); a multishot receive draws from the shared ring, a poll on none.
        return self.recv_op is not None and self.recv_op is self.single_op
