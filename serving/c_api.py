"""A SavedModel loaded and run through TensorFlow's C API (ctypes), in a process that never imports TensorFlow's
Python: what tensorflow_model_server holds in memory, as near as this machine can show it.

`TF_LoadSessionFromSavedModel` is TensorFlow's C++ `LoadSavedModel`, the loader of TF Serving's SavedModelBundle:
the MetaGraph tagged `serve` imported into a session, the restore op, the init op. The libraries are the ones the
TensorFlow wheel ships (`libtensorflow_cc.so.2`, `libtensorflow_framework.so.2`), so the session runs the same
kernels as the Python session loader; what it leaves out is TensorFlow's Python (0.29 GiB of the 0.63 GiB a
Python server holds before any graph, 2-core AMD EPYC, TensorFlow 2.21).
"""

import ctypes
import functools
import importlib.util
import os

import numpy as np

# TF_DataType codes (tensorflow/c/tf_datatype.h) of the dtypes a Gemma 3 export's signatures take and give.
_CODES = {np.dtype(np.float32): 1, np.dtype(np.int32): 3, np.dtype(np.int64): 9, np.dtype(np.bool_): 10}
_STRING = 7
_DTYPES = {code: dtype for dtype, code in _CODES.items()}
_TSTRING_BYTES = 24  # sizeof(TF_TString)


def feeds_to_json(feeds):
    """{tensor name: array} -> {tensor name: [values, dtype]}: feeds that a process without TensorFlow's Python
    takes in as JSON (`feeds_from_json`). Strings go as their bytes (str as UTF-8), each byte a character."""
    as_text = np.frompyfunc(lambda item: (item if isinstance(item, bytes) else str(item).encode()).decode("latin-1"),
                            1, 1)
    return {name: [np.asarray(as_text(value), object).tolist(), "bytes"] if value.dtype.kind in "OSU" else
            [value.tolist(), value.dtype.name] for name, value in feeds.items()}


def feeds_from_json(feeds):
    """The inverse of `feeds_to_json`: strings as bytes."""
    as_bytes = np.frompyfunc(lambda text: text.encode("latin-1"), 1, 1)
    return {name: np.asarray(as_bytes(np.array(values, object)), object) if dtype == "bytes" else
            np.array(values, dtype) for name, (values, dtype) in feeds.items()}


class _Output(ctypes.Structure):  # TF_Output
    _fields_ = [("oper", ctypes.c_void_p), ("index", ctypes.c_int)]


@functools.cache
def tensorflow_c_library():
    """The installed TensorFlow wheel's C API library (after the framework library it needs), loaded without
    importing TensorFlow's Python, with the signatures of the functions `CSession` calls."""
    spec = importlib.util.find_spec("tensorflow")
    if spec is None:
        raise ImportError("TensorFlow is not installed: serving.c_api loads its wheel's C libraries.")
    folder = spec.submodule_search_locations[0]
    ctypes.CDLL(os.path.join(folder, "libtensorflow_framework.so.2"), mode=ctypes.RTLD_GLOBAL)
    library = ctypes.CDLL(os.path.join(folder, "libtensorflow_cc.so.2"), mode=ctypes.RTLD_GLOBAL)
    pointer, size = ctypes.c_void_p, ctypes.c_size_t
    for name, restype, argtypes in [
            ("TF_NewStatus", pointer, []), ("TF_GetCode", ctypes.c_int, [pointer]),
            ("TF_Message", ctypes.c_char_p, [pointer]), ("TF_LoadLibrary", pointer, [ctypes.c_char_p, pointer]),
            ("TF_NewSessionOptions", pointer, []), ("TF_DeleteSessionOptions", None, [pointer]),
            ("TF_NewGraph", pointer, []),
            ("TF_LoadSessionFromSavedModel", pointer, [pointer, pointer, ctypes.c_char_p,
                                                       ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, pointer,
                                                       pointer, pointer]),
            ("TF_GraphOperationByName", pointer, [pointer, ctypes.c_char_p]),
            ("TF_AllocateTensor", pointer, [ctypes.c_int, ctypes.POINTER(ctypes.c_int64), ctypes.c_int, size]),
            ("TF_TensorData", pointer, [pointer]), ("TF_TensorType", ctypes.c_int, [pointer]),
            ("TF_NumDims", ctypes.c_int, [pointer]), ("TF_Dim", ctypes.c_int64, [pointer, ctypes.c_int]),
            ("TF_TensorByteSize", size, [pointer]), ("TF_DeleteTensor", None, [pointer]),
            ("TF_StringInit", None, [pointer]), ("TF_StringCopy", None, [pointer, ctypes.c_char_p, size]),
            ("TF_StringGetDataPointer", pointer, [pointer]), ("TF_StringGetSize", size, [pointer]),
            ("TF_SessionRun", None, [pointer, pointer, pointer, pointer, ctypes.c_int, pointer, pointer,
                                     ctypes.c_int, pointer, ctypes.c_int, pointer, pointer])]:
        function = getattr(library, name)
        function.restype, function.argtypes = restype, argtypes
    return library


class CSession:
    """A SavedModel version loaded as TF Serving loads it. `op_libraries`: the custom op libraries its graph
    needs (`serving.op_libraries.needed_op_libraries`), registered before the load as TF Serving links them in.

    Raises RuntimeError with TensorFlow's message where a step fails.
    """

    def __init__(self, export_dir, op_libraries=(), tags=("serve",)):
        self._lib = tensorflow_c_library()
        self._status = self._lib.TF_NewStatus()
        for library in op_libraries:
            self._lib.TF_LoadLibrary(library.encode(), self._status)
            self._check(f"loading the op library {library}")
        self._graph = self._lib.TF_NewGraph()
        options = self._lib.TF_NewSessionOptions()
        tag_array = (ctypes.c_char_p * len(tags))(*[tag.encode() for tag in tags])
        self._session = self._lib.TF_LoadSessionFromSavedModel(options, None, export_dir.encode(), tag_array,
                                                               len(tags), self._graph, None, self._status)
        self._lib.TF_DeleteSessionOptions(options)
        self._check(f"loading {export_dir}")

    def run(self, feeds, fetches):
        """`feeds` {tensor name: array}, `fetches` {alias: tensor name} -> {alias: array}; strings as bytes."""
        inputs = (_Output * len(feeds))(*[self._output(name) for name in feeds])
        values = (ctypes.c_void_p * len(feeds))(*[self._tensor(np.asarray(value)) for value in feeds.values()])
        outputs = (_Output * len(fetches))(*[self._output(name) for name in fetches.values()])
        results = (ctypes.c_void_p * len(fetches))()
        try:
            self._lib.TF_SessionRun(self._session, None, inputs, values, len(feeds), outputs, results, len(fetches),
                                    None, 0, None, self._status)
        finally:
            for value in values:
                self._lib.TF_DeleteTensor(value)
        self._check("Session.run")
        arrays = {}
        for alias, result in zip(fetches, results):
            try:
                arrays[alias] = self._array(result)
            finally:
                self._lib.TF_DeleteTensor(result)
        return arrays

    def _check(self, what):
        if self._lib.TF_GetCode(self._status):
            raise RuntimeError(f"{what}: {self._lib.TF_Message(self._status).decode()}")

    def _output(self, tensor_name):
        operation, _, index = tensor_name.partition(":")
        handle = self._lib.TF_GraphOperationByName(self._graph, operation.encode())
        if not handle:
            raise KeyError(f"{tensor_name}: no such operation in the loaded graph")
        return _Output(handle, int(index or 0))

    def _tensor(self, array):
        dims = (ctypes.c_int64 * array.ndim)(*array.shape)
        if array.dtype.kind in "OSU":  # strings
            items = [item if isinstance(item, bytes) else str(item).encode() for item in array.reshape(-1)]
            tensor = self._lib.TF_AllocateTensor(_STRING, dims, array.ndim, _TSTRING_BYTES * len(items))
            data = self._lib.TF_TensorData(tensor)
            for position, item in enumerate(items):
                self._lib.TF_StringInit(data + position * _TSTRING_BYTES)
                self._lib.TF_StringCopy(data + position * _TSTRING_BYTES, item, len(item))
            return tensor
        if array.dtype not in _CODES:
            raise TypeError(f"serving.c_api feeds {sorted(map(str, _CODES))} and strings; got {array.dtype}")
        array = np.asarray(array, order="C")  # not ascontiguousarray, which makes a scalar [1]
        tensor = self._lib.TF_AllocateTensor(_CODES[array.dtype], dims, array.ndim, array.nbytes)
        ctypes.memmove(self._lib.TF_TensorData(tensor), array.ctypes.data, array.nbytes)
        return tensor

    def _array(self, tensor):
        shape = [self._lib.TF_Dim(tensor, axis) for axis in range(self._lib.TF_NumDims(tensor))]
        data, code = self._lib.TF_TensorData(tensor), self._lib.TF_TensorType(tensor)
        if code == _STRING:
            strings = [ctypes.string_at(self._lib.TF_StringGetDataPointer(data + position * _TSTRING_BYTES),
                                        self._lib.TF_StringGetSize(data + position * _TSTRING_BYTES))
                       for position in range(int(np.prod(shape)))]
            return np.array(strings, dtype=object).reshape(shape)
        if code not in _DTYPES:
            raise TypeError(f"serving.c_api fetches {sorted(map(str, _CODES))} and strings; got TF_DataType {code}")
        size = self._lib.TF_TensorByteSize(tensor)
        return np.frombuffer(ctypes.string_at(data, size), _DTYPES[code]).reshape(shape).copy()
