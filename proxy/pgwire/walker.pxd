# C types for walker.py, which Cython compiles in its pure-Python mode (this file augments it).
cimport cython

@cython.locals(length=Py_ssize_t)
cpdef Py_ssize_t frame_length(object buf, Py_ssize_t pos, Py_ssize_t max_message_bytes, str whose) except -2

cdef bytes _hold_table(frozenset hold)


cdef class FrameWalker:
    cdef frozenset _hold
    cdef bytes _table
    cdef Py_ssize_t _max
    cdef str _whose
    cdef Py_ssize_t _skip
    cdef bytearray _partial

    cdef readonly bytes last_buf
    cdef readonly Py_ssize_t last_stop

    cpdef list scan(self, object data)
    cpdef tuple split(self, object data)
    cpdef tuple walk(self, object data, bint is_every)

    @cython.locals(buf=bytes, table=bytes, pieces=list, pos=Py_ssize_t, n=Py_ssize_t, take=Py_ssize_t,
                   end=Py_ssize_t, limit=Py_ssize_t, length=Py_ssize_t, type_byte=Py_ssize_t)
    cdef list _walk(self, object data, bint is_every, bint is_bodies)

    @cython.locals(partial=bytearray, length=Py_ssize_t, want=Py_ssize_t, take=Py_ssize_t, raw=bytes)
    cdef Py_ssize_t _continue_held(self, bytes data, list pieces, bint is_bodies) except -1
