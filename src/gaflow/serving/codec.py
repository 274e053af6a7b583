"""The openpi wire format: msgpack with numpy arrays as ``{__ndarray__, data, dtype, shape}`` maps — no pickle.

This is the format of ``openpi_client.msgpack_numpy`` (openpi-client 0.1.2), written here rather than imported
because the server must be stricter than the client: :func:`unpackb` rebuilds an array only from a plain numeric
dtype (bool, int, uint, float), a shape of at most :data:`MAX_NDIM` non-negative ints and exactly
``prod(shape) · itemsize`` bytes, and every other malformed map is a :class:`CodecError` that names what was wrong.
Object, structured, complex and string dtypes are refused in both directions (openpi refuses the same kinds), so no
byte from the network ever reaches a Python constructor other than ``numpy.frombuffer``.

>>> import numpy as np
>>> unpackb(packb({"actions": np.ones((2, 3), np.float32)}))["actions"].shape
(2, 3)
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

ARRAY_TAG, SCALAR_TAG = b"__ndarray__", b"__npgeneric__"
NUMERIC_KINDS = "biuf"  # bool, signed int, unsigned int, float
MAX_NDIM = 8


class CodecError(ValueError):
    """A frame that is not valid msgpack, or an array map that does not describe a numeric array."""


def _encode(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)):
        if obj.dtype.kind not in NUMERIC_KINDS:
            raise CodecError(f"cannot send a numpy array of dtype {obj.dtype} (only bool/int/uint/float)")
        if isinstance(obj, np.ndarray):
            arr = np.ascontiguousarray(obj)
            return {ARRAY_TAG: True, b"data": arr.tobytes(), b"dtype": arr.dtype.str, b"shape": list(arr.shape)}
        return {SCALAR_TAG: True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot serialise an object of type {type(obj).__name__}")


def packb(obj: Any) -> bytes:
    """Serialise ``obj`` (dicts, lists, str, numbers, numpy arrays and scalars) in the openpi format."""
    return msgpack.packb(obj, default=_encode, use_bin_type=True)


def _numeric_dtype(value: Any, what: str) -> np.dtype:
    if not isinstance(value, (str, bytes)):
        raise CodecError(f"{what}: 'dtype' must be a string such as '<f4', got {type(value).__name__}")
    try:
        dtype = np.dtype(value.decode() if isinstance(value, bytes) else value)
    except (TypeError, ValueError, UnicodeDecodeError):
        raise CodecError(f"{what}: {value!r} is not a numpy dtype") from None
    if dtype.kind not in NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise CodecError(f"{what}: dtype {value!r} is not allowed (only bool/int/uint/float arrays)")
    return dtype


def _decode(obj: dict) -> Any:
    if ARRAY_TAG in obj:
        if set(obj) != {ARRAY_TAG, b"data", b"dtype", b"shape"}:
            raise CodecError(f"array map must have exactly the keys __ndarray__, data, dtype, shape; got "
                             f"{sorted(k.decode(errors='replace') if isinstance(k, bytes) else str(k) for k in obj)}")
        dtype = _numeric_dtype(obj[b"dtype"], "array")
        shape, data = obj[b"shape"], obj[b"data"]
        if not isinstance(shape, (list, tuple)) or len(shape) > MAX_NDIM or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
            raise CodecError(f"array: 'shape' must be a list of at most {MAX_NDIM} non-negative ints, got {shape!r}")
        if not isinstance(data, bytes):
            raise CodecError(f"array: 'data' must be binary, got {type(data).__name__}")
        expected = math.prod(shape) * dtype.itemsize
        if len(data) != expected:
            raise CodecError(f"array: shape {list(shape)} of {dtype} needs {expected} bytes, got {len(data)}")
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    if SCALAR_TAG in obj:
        if set(obj) != {SCALAR_TAG, b"data", b"dtype"}:
            raise CodecError("scalar map must have exactly the keys __npgeneric__, data, dtype")
        dtype = _numeric_dtype(obj[b"dtype"], "scalar")
        if not isinstance(obj[b"data"], (bool, int, float)):
            raise CodecError(f"scalar: 'data' must be a number, got {type(obj[b'data']).__name__}")
        try:
            return dtype.type(obj[b"data"])
        except (OverflowError, ValueError) as e:
            raise CodecError(f"scalar: {obj[b'data']!r} does not fit {dtype}: {e}") from None
    return obj


def unpackb(data: bytes) -> Any:
    """Parse one frame; raise :class:`CodecError` (naming the problem) on anything malformed."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CodecError(f"expected a binary frame, got {type(data).__name__}")
    try:
        return msgpack.unpackb(data, object_hook=_decode, raw=False)
    except CodecError:
        raise
    except Exception as e:  # msgpack raises several types (ExtraData, FormatError, StackError, ValueError, ...)
        raise CodecError(f"not a msgpack frame ({type(e).__name__}: {e})") from None
