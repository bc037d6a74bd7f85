"""Read a weights file in torch's legacy format (``torch.save`` before 1.6) as numpy arrays, without torch.

The format is five pickles in a row (a magic number, the protocol version, system info, the object,
the keys of its storages), then each storage's raw bytes. ``torch.load(weights_only=True)`` reads it
with an unpickler that builds only tensors and containers; this does the same with the standard
library's documented way to restrict unpickling (``find_class``, "Restricting Globals" in the pickle
docs): the only names a file may use are the three a state dict of float tensors needs, and each is
answered with a function of this module, so nothing named in the file is imported or run. Written out
here because no maintained library reads this format without torch (safetensors reads its own);
the speaker encoder's weights (``embedding.py``) are such a file, pinned by sha256.
"""
from __future__ import annotations

import collections
import io
import pickle
import struct
from dataclasses import dataclass

import numpy as np

MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
PROTOCOL = 1001
_DTYPES = {"FloatStorage": np.dtype("<f4")}  # the only storage type a float32 state dict holds


@dataclass
class _Storage:
    key: str
    dtype: np.dtype
    numel: int
    array: np.ndarray | None = None  # filled in from the bytes after the pickles


@dataclass
class _TensorRef:
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    def array(self) -> np.ndarray:
        """The tensor's values as a new array; ValueError when its view reaches outside its storage."""
        flat = self.storage.array
        if any(s < 0 for s in self.shape) or any(s < 0 for s in self.stride) or self.offset < 0:
            raise ValueError(f"storage {self.storage.key}: negative shape, stride or offset")
        last = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride)) if all(self.shape) else self.offset - 1
        if last >= len(flat):
            raise ValueError(f"storage {self.storage.key}: a tensor of shape {self.shape} reaches past its {len(flat)} values")
        item = flat.itemsize
        view = np.lib.stride_tricks.as_strided(flat[self.offset :], self.shape, tuple(s * item for s in self.stride), writeable=False)
        return np.array(view, dtype=np.float32)


def _rebuild_tensor(storage, offset, shape, stride, requires_grad=False, hooks=None, metadata=None) -> _TensorRef:
    """What ``torch._utils._rebuild_tensor_v2`` is answered with: a reference, made an array once storages are read."""
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("a tensor without a storage")
    return _TensorRef(storage, int(offset), tuple(int(s) for s in shape), tuple(int(s) for s in stride))


class _Unpickler(pickle.Unpickler):
    """Builds only dicts, lists, tuples, numbers, strings and tensor references; refuses every other name."""

    _ALLOWED = {("collections", "OrderedDict"): collections.OrderedDict,
                ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor}

    def __init__(self, file, storages: dict[str, _Storage]) -> None:
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[module, name]
        if module == "torch" and name in _DTYPES:
            return _DTYPES[name]
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a weights file")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[1], np.dtype)):
            raise pickle.UnpicklingError(f"unsupported storage reference {str(pid)[:80]}")
        key, numel = str(pid[2]), int(pid[4])
        return self.storages.setdefault(key, _Storage(key, pid[1], numel))


def _arrays(obj):
    """``obj`` with every tensor reference replaced by its array (dicts, lists and tuples walked)."""
    if isinstance(obj, _TensorRef):
        return obj.array()
    if isinstance(obj, dict):
        return {k: _arrays(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_arrays(v) for v in obj)
    return obj


def read_legacy(data: bytes) -> dict:
    """The object a legacy-format torch file holds, its float32 tensors as numpy arrays.

    Raises
    ------
    ValueError
        Not a legacy torch file, a name or storage type outside a float32 state dict, or damaged bytes.
    """
    f, storages = io.BytesIO(data), {}
    try:
        if _Unpickler(f, storages).load() != MAGIC or _Unpickler(f, storages).load() != PROTOCOL:
            raise ValueError("not a torch file in the legacy format (magic number or protocol differ)")
        _Unpickler(f, storages).load()  # system info: endianness and type sizes of the machine that saved it
        obj = _Unpickler(f, storages).load()
        keys = _Unpickler(f, storages).load()
        pos = f.tell()
        for key in keys:
            st = storages[str(key)]
            (numel,) = struct.unpack_from("<q", data, pos)
            size = numel * st.dtype.itemsize
            if numel != st.numel or pos + 8 + size > len(data):
                raise ValueError(f"storage {key}: {numel} values where {st.numel} were announced, or past the end of the file")
            st.array = np.frombuffer(data, st.dtype, numel, pos + 8)
            pos += 8 + size
        if any(st.array is None for st in storages.values()):
            raise ValueError("a tensor refers to a storage the file does not hold")
        return _arrays(obj)
    except (pickle.UnpicklingError, EOFError, struct.error, KeyError, TypeError, AttributeError, IndexError) as e:
        raise ValueError(f"not a readable torch weights file ({type(e).__name__}: {e})") from None
