# C types for shape_key.py, which Cython compiles in its pure-Python mode (this file augments it).
cimport cython

cdef bint _is_word(Py_ssize_t c)
cdef bint _is_digit(Py_ssize_t c)

@cython.locals(data=bytes, n=Py_ssize_t, out=bytearray, run=Py_ssize_t, i=Py_ssize_t, j=Py_ssize_t,
               k=Py_ssize_t, c=Py_ssize_t, prev=Py_ssize_t)
cpdef object shape_key(str sql)
