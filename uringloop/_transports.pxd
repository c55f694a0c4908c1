from uringloop._receiveside cimport ReceiveSide


cdef class SocketTransport(ReceiveSide):
    # ReceiveSide holds the receiving state; SendSide, its base, the socket, its descriptor, the
    # closing and write_eof() flags and the sending state; WriteFlow, SendSide's base, the loop,
    # proactor, protocol and flow control.
    # get_extra_info(): 'socket', 'sockname' and 'peername' are fields, the addresses fetched at
    # construction as the stock transport does; `extra` is None unless the creator passed a dict
    # or _extra was asked for (then the dict holds them all and answers).
    cdef object socket_info          # the socket, or its TransportSocket once asked for
    cdef object sockname
    cdef object peername
    cdef dict extra
    cdef object server

    cdef object __weakref__
    # Attributes of the instance's own (see SocketTransport.__cinit__); NULL until one is set.
    cdef dict __dict__

    cdef int setup(self, object loop, object sock, object protocol, object waiter, dict extra,
                   object peername, object server) except -1
    cdef int set_addresses(self, object sock, object peername) except -1
    cdef object socket_extra(self)
    cdef int force_close(self, object exc) except -1
    cdef int fatal_error(self, object exc, str message) except -1
