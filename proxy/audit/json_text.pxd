# C types for json_text.py, which Cython compiles in its pure-Python mode (this file augments it).
cimport cython

@cython.locals(ch=Py_UCS4, c=Py_UCS4)
cpdef str json_string(str text)
