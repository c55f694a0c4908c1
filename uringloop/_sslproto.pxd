# The compiled TLS layer (_sslproto.pyx): its two classes and their state, apart from the code.

cimport cython

cdef class SSLProtocol


@cython.final
cdef class SSLTransport:
    cdef object __weakref__          # as the stock transport: WeakSet, weakref.finalize...
    cdef dict __dict__               # attributes set on it, methods replaced (_instance_dict.h)
    cdef readonly object _loop
    cdef SSLProtocol protocol        # None after a second close(), as the stock transport
    cdef public bint _closed

    cdef SSLProtocol live_protocol(self)


@cython.final
cdef class SSLProtocol:
    cdef object __weakref__
    cdef object loop
    cdef object app_protocol
    cdef bint app_is_buffered
    cdef object app_get_buffer
    cdef object app_buffer_updated
    cdef object waiter
    cdef object transport               # the socket transport, None before/after the connection
    cdef SSLTransport app_transport
    cdef bint app_transport_created

    cdef bint server_side
    cdef object server_hostname
    cdef object sslcontext
    cdef object sslobj                  # the ssl.SSLObject (what get_extra_info shows)
    cdef object ssl_c                   # what read()/write()/pending() are called on
    cdef object incoming                # ciphertext received, for OpenSSL to read (MemoryBIO)
    cdef object outgoing                # ciphertext OpenSSL wrote, for the socket (MemoryBIO)
    cdef dict extra

    cdef int state                      # UNWRAPPED ... SHUTDOWN (_sslproto.pyx)
    cdef int app_state                  # APP_INIT ... APP_CON_LOST
    cdef Py_ssize_t conn_lost
    cdef bint eof_received_flag

    cdef object write_backlog           # plaintext not yet taken by OpenSSL (a deque)
    cdef Py_ssize_t write_buffer_size

    cdef object handshake_timeout
    cdef object shutdown_timeout
    cdef object handshake_start_time
    cdef object handshake_timeout_handle
    cdef object shutdown_timeout_handle

    # flow control: the limits as given (the getters return them) and as integers to compare
    cdef bint ssl_writing_paused
    cdef bint app_reading_paused
    cdef bint ssl_reading_paused
    cdef bint app_writing_paused
    cdef object incoming_high_water, incoming_low_water
    cdef object outgoing_high_water, outgoing_low_water
    cdef Py_ssize_t incoming_high, incoming_low, outgoing_high, outgoing_low

    cdef bytearray ssl_buffer           # where the socket transport receives ciphertext
    cdef object ssl_buffer_view

    cdef set_app_protocol(self, app_protocol)
    cdef wakeup_waiter(self, exc=*)
    cdef SSLTransport get_app_transport(self)
    cdef get_extra_info(self, name, default)
    cdef int set_state(self, int new_state) except -1
    cdef start_handshake(self)
    cdef do_handshake(self)
    cdef on_handshake_complete(self, handshake_exc)
    cdef start_shutdown(self)
    cdef do_flush(self)
    cdef do_shutdown(self)
    cdef on_shutdown_complete(self, shutdown_exc)
    cdef abort(self, exc)
    cdef int refuse_write(self) except -1
    cdef write_one(self, data)
    cdef write_appdata(self, list_of_data)
    cdef do_write(self)
    cdef process_outgoing(self)
    cdef bint nothing_to_read(self) except -1
    cdef do_read(self)
    cdef do_read_buffered(self)
    cdef do_read_copied(self)
    cdef call_eof_received(self)
    cdef Py_ssize_t get_write_buffer_size(self) except -1
    cdef control_app_writing(self)
    cdef report_flow_failure(self, message, exc)
    cdef set_write_buffer_limits(self, high, low)
    cdef resume_app_reading(self)
    cdef control_ssl_reading(self)
    cdef set_read_buffer_limits(self, high, low)
    cdef fatal_error(self, exc, message)
