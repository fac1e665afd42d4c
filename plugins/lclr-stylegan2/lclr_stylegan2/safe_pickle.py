"""A restricted unpickler for NVIDIA's network pickles, which runs nothing.

NVIDIA's ``.pkl`` files (stylegan2-ada-pytorch, stylegan3) pickle each
network module through ``torch_utils.persistence``: the pickle calls
``_reconstruct_persistent_obj(meta)``, where ``meta`` carries the source code
of the module's Python file, the class name and the module's ``__dict__``.
A normal ``pickle.load`` executes that source. Here every global the pickle
names is looked up in :data:`ALLOWED`, a short table of stand-ins written in
this file; nothing is imported from the file's module names. The stand-ins
only record data:

- a persistent module becomes a :class:`PersistentObject` (its class name and
  its ``__dict__``: ``_parameters``, ``_buffers``, ``_modules``, attributes);
  the embedded source is kept as a string and never executed;
- tensors are rebuilt from the raw bytes of their storages, read here (the
  legacy ``torch.save`` stream inside ``torch.storage._load_from_bytes`` is
  parsed by this module, never handed to torch's own loader, which would
  unpickle it without ``weights_only``);
- NumPy scalars and arrays are decoded from their bytes; ``dnnlib.EasyDict``
  is a dict.

Any other global is refused with :class:`Refused`, before anything is built.

A load allocates no more than its file can justify: the storages it creates
hold at most the file's bytes, the tensors viewing them at most twice that
(a :class:`Budget` per load), and a zip file's entries must be stored
uncompressed, as torch writes them. The stand-ins are immutable, so a
pickle cannot change them for the loads that follow.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import math
import os
import pickle
import pickletools
import struct
import zipfile
from collections import OrderedDict
from typing import Any

import torch

# torch's storage class names -> dtypes (the names a pickle may carry)
STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "UntypedStorage": torch.uint8,
}

# NumPy dtype codes -> struct formats, for scalars such as np.float64(0.25)
NUMPY_SCALARS = {
    "f8": "d", "f4": "f", "f2": "e", "i8": "q", "i4": "i", "i2": "h",
    "i1": "b", "u8": "Q", "u4": "I", "u2": "H", "u1": "B", "b1": "?",
}  # fmt: skip


class Refused(Exception):
    """The pickle names a global outside the allow-list, or is malformed.

    ``str()`` is one line suitable for an error message.
    """


class Budget:
    """The bytes a load may still allocate, from the size of its file.

    Storages draw on ``storages`` (their bytes must be in the file); tensor
    views on ``views`` (twice the file, for tensors that share storage).
    """

    def __init__(self, file_bytes: int):
        self.storages = file_bytes
        self.views = 2 * file_bytes + 2**20

    def take(self, kind: str, nbytes: int) -> None:
        left = getattr(self, kind)
        if nbytes > left:
            what = "storages" if kind == "storages" else "tensors"
            raise Refused(f"its {what} are larger than the file that holds them")
        setattr(self, kind, left - nbytes)


_BUDGET: contextvars.ContextVar[Budget] = contextvars.ContextVar("budget")


def _take(kind: str, nbytes: int) -> None:
    budget = _BUDGET.get(None)
    if budget is None:
        raise Refused("a tensor outside a load")
    budget.take(kind, nbytes)


@contextlib.contextmanager
def budget_of(file_bytes: int):
    """Bound the allocations of the load run inside, by its file's size."""
    token = _BUDGET.set(Budget(file_bytes))
    try:
        yield
    finally:
        _BUDGET.reset(token)


MAX_NESTING = 1000
_MODIFY = {"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"}
_MARK = object()


def check_nesting(f, rewind: bool = True) -> None:
    """Refuse a pickle that nests containers deeper than :data:`MAX_NESTING`.

    Reads one pickle from ``f`` without building anything, then puts ``f``
    back where it was (or, with ``rewind=False``, leaves it after the
    pickle). A stream cut short raises ``EOFError``, one that cannot be
    parsed ``pickle.UnpicklingError``, as unpickling it would.

    Python hashes nested tuples recursively in C, so a few
    hundred kilobytes of ``((((...))))`` used as a dict key crash the
    interpreter inside any unpickler, torch's included. The depth of every
    object on the pickle machine's stack and memo is tracked; the mutable
    containers that are filled after being memoised cannot be hashed, so
    their depth need not be exact.
    """
    start = f.tell()
    done = False
    stack: list = []
    memo: dict = {}
    try:
        for op, arg, _ in pickletools.genops(f):
            before, after = op.stack_before, op.stack_after
            popped: list = []
            take = len(before)
            if pickletools.markobject in before or (
                op.name == "POP" and stack and stack[-1] is _MARK
            ):
                at = len(stack) - 1 - stack[::-1].index(_MARK)
                popped, stack[at:] = stack[at + 1 :], []
                mark = pickletools.markobject
                take = before.index(mark) if mark in before else 0
            if take:
                if len(stack) < take:
                    raise IndexError("stack underflow")
                popped = stack[-take:] + popped
                del stack[-take:]
            if op.name in ("BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE"):
                key = len(memo) if op.name == "MEMOIZE" else arg
                memo[key] = popped[0] if popped else stack[-1]
            if op.name in ("DUP", "MEMOIZE"):
                depth = popped[0]
            elif op.name in ("BINGET", "LONG_BINGET", "GET"):
                depth = memo.get(arg, 0)
            elif op.name in _MODIFY:
                depth = max(popped[0], 1 + max(popped[1:], default=-1))
            else:
                depth = 1 + max(popped, default=-1)
            if depth > MAX_NESTING:
                raise Refused(f"it nests objects more than {MAX_NESTING} deep")
            for item in after:
                stack.append(_MARK if item is pickletools.markobject else depth)
        done = True
    except (ValueError, IndexError) as e:  # unknown opcode, cut or bad stream
        if any(cut in str(e) for cut in ("exhausted", "not enough", "remain")):
            raise EOFError(f"pickle data was truncated ({e})") from None
        raise pickle.UnpicklingError(f"malformed pickle data ({e})") from None
    finally:
        if rewind or not done:
            f.seek(start)


class _Frozen:
    """An allow-listed callable a pickle can call but not modify.

    Pickle's BUILD opcode sets attributes of any object it is handed; on the
    shared stand-ins that would carry over to later loads.
    """

    __slots__ = ("_fn", "_name")

    def __init__(self, fn, name: str):
        object.__setattr__(self, "_fn", fn)
        object.__setattr__(self, "_name", name)

    def __call__(self, *args, **kwargs):
        return self._fn(*args, **kwargs)

    def __setattr__(self, name, value):
        raise Refused(f"the pickle modifies {self._name}")

    def __setstate__(self, state):
        raise Refused(f"the pickle modifies {self._name}")


class PersistentObject:
    """What a ``torch_utils.persistence`` object holds, as data only."""

    def __init__(self, class_name: str, state: dict, module_src: str):
        self.class_name = class_name
        self.state = state
        self.module_src = module_src

    def __repr__(self) -> str:
        return f"PersistentObject({self.class_name})"

    def _table(self, name: str) -> dict:
        table = self.state.get(name)
        return table if isinstance(table, dict) else {}

    def child(self, name: str) -> PersistentObject | None:
        """Submodule ``name`` (from ``_modules``), or None."""
        obj = self._table("_modules").get(name)
        return obj if isinstance(obj, PersistentObject) else None

    def children(self) -> dict[str, Any]:
        """All entries of ``_modules``."""
        return dict(self._table("_modules"))

    def tensor(self, name: str) -> torch.Tensor | None:
        """Parameter or buffer ``name``, or None."""
        for table in ("_parameters", "_buffers"):
            value = self._table(table).get(name)
            if isinstance(value, torch.Tensor):
                return value
        return None

    def attr(self, name: str, default: Any = None) -> Any:
        """A plain attribute of the module (``z_dim``, ``conv_clamp``...)."""
        return self.state.get(name, default)


class EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict``: a plain dict."""

    def __setstate__(self, state):
        if state:
            raise Refused("an EasyDict with unexpected state")


class NumpyDType:
    """Stand-in for ``numpy.dtype``: remembers the code and byte order."""

    def __init__(self, code: Any = "f8", align: Any = False, copy: Any = True):
        if not isinstance(code, str):
            raise Refused("a numpy dtype that is not a plain code")
        self.code = code
        self.order = "<"

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) > 1 and state[1] in "<>|=":
            self.order = state[1]


def numpy_scalar(dtype: Any, data: Any = b"") -> Any:
    """Stand-in for ``numpy.core.multiarray.scalar``: a Python number."""
    fmt = NUMPY_SCALARS.get(getattr(dtype, "code", None))
    if fmt is None or not isinstance(data, bytes):
        raise Refused("a numpy scalar of an unsupported type")
    order = ">" if dtype.order == ">" else "<"
    try:
        return struct.unpack(order + fmt, data)[0]
    except struct.error:
        raise Refused("a numpy scalar with the wrong number of bytes") from None


class NumpyArray:
    """Stand-in for a pickled ``numpy.ndarray``: its shape, code and data.

    Numbers are decoded into a flat tuple ``values``; arrays of other
    types keep their raw bytes (or, for object arrays, their items, which
    were unpickled under the same rules).
    """

    def __init__(self, cls: Any = None, shape: Any = (0,), typecode: Any = b"b"):
        if cls is not NumpyArray:
            raise Refused("a numpy array of a class other than ndarray")
        self.shape: tuple = ()
        self.code = ""
        self.values: Any = ()

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) != 5:
            raise Refused("a numpy array with unexpected state")
        _, shape, dtype, _, raw = state
        self.shape = _int_tuple(shape, "shape")
        self.code = getattr(dtype, "code", "")
        fmt = NUMPY_SCALARS.get(self.code)
        count = math.prod(self.shape)
        if fmt is None or not isinstance(raw, bytes):
            self.values = raw
            return
        order = ">" if dtype.order == ">" else "<"
        try:
            self.values = struct.unpack(f"{order}{count}{fmt}", raw)
        except struct.error:
            raise Refused("a numpy array with the wrong number of bytes") from None


class StorageType:
    """Stand-in for ``torch.FloatStorage`` and its kin: a dtype (immutable)."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "dtype", STORAGE_DTYPES[name])

    def __call__(self, *args, **kwargs):
        raise Refused(f"the pickle calls torch.{self.name}")

    def __setattr__(self, name, value):
        raise Refused(f"the pickle modifies torch.{self.name}")

    def __setstate__(self, state):
        raise Refused(f"the pickle modifies torch.{self.name}")


class Storage:
    """A flat tensor standing for a torch storage; filled once read."""

    def __init__(self, dtype: torch.dtype, numel: int):
        _take("storages", numel * _itemsize(dtype))
        self.dtype = dtype
        self.flat = torch.zeros(numel, dtype=dtype)
        self.filled = False

    def fill(self, raw: bytes) -> None:
        """Copy little-endian ``raw`` bytes in; the length must match."""
        nbytes = self.flat.numel() * self.flat.element_size()
        if len(raw) != nbytes:
            raise Refused(f"a storage of {len(raw)} bytes where {nbytes} belong")
        if nbytes:
            buf = bytearray(raw)  # outlives the tensor that borrows it
            src = torch.frombuffer(buf, dtype=torch.uint8)
            self.flat.view(torch.uint8).copy_(src)
            del src
        self.filled = True


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise Refused(f"a tensor whose {what} is not a tuple of integers")
    return tuple(value)


def rebuild_tensor(storage, offset, size, stride, *_ignored) -> torch.Tensor:
    """Stand-in for ``torch._utils._rebuild_tensor_v2``: a view of a storage."""
    if not isinstance(storage, Storage) or not isinstance(offset, int):
        raise Refused("a tensor that is not built from a storage")
    size, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(size) != len(stride):
        raise Refused("a tensor whose size and stride disagree")
    last = offset + sum((n - 1) * s for n, s in zip(size, stride) if n > 0)
    if offset < 0 or (all(size) and last >= storage.flat.numel()):
        raise Refused("a tensor that reaches past its storage")
    # a view costs nothing, but each copy made of it does
    _take("views", math.prod(size) * storage.flat.element_size())
    if not all(size):
        return torch.zeros(size, dtype=storage.dtype)
    # a view: the legacy format fills the storage after the tensors are made
    return storage.flat.as_strided(size, stride, offset)


def encode_latin1(text: Any, encoding: Any = "latin1") -> bytes:
    """Stand-in for ``_codecs.encode``: how protocol 2 pickles store bytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise Refused("an encoded string that is not latin-1 bytes")
    return text.encode("latin1")


def rebuild_parameter(data, requires_grad=False, hooks=None, state=None):
    """Stand-in for ``torch._utils._rebuild_parameter``: the plain tensor."""
    if not isinstance(data, torch.Tensor):
        raise Refused("a parameter that holds no tensor")
    return data


def reconstruct_persistent(meta: Any) -> PersistentObject:
    """Stand-in for ``torch_utils.persistence._reconstruct_persistent_obj``.

    Keeps the class name and state; the module source is never executed.
    """
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise Refused("a persistent object without its class description")
    name, state = meta.get("class_name"), meta.get("state")
    if not isinstance(name, str) or not isinstance(state, dict):
        raise Refused("a persistent object without class name or state")
    return PersistentObject(name, state, str(meta.get("module_src", "")))


def load_from_bytes(data: Any) -> Storage:
    """Stand-in for ``torch.storage._load_from_bytes``.

    ``data`` is a legacy ``torch.save`` stream of one storage: magic number,
    protocol, system info, the storage's persistent id, its key list, then
    per key an 8-byte element count and the raw bytes.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise Refused("a storage without bytes")
    return read_legacy_stream(io.BytesIO(bytes(data)))


def read_legacy_stream(f: io.BytesIO) -> Any:
    """The object of a legacy (non-zip) ``torch.save`` stream, safely."""
    budget = len(f.getbuffer())  # no storage can be larger than the stream

    def unpickle(storages=None):
        check_nesting(f)
        return _StreamUnpickler(f, INNER, storages=storages, budget=budget).load()

    if unpickle() != 0x1950A86A20F9469CFC6C:
        raise Refused("a storage stream without torch's magic number")
    unpickle()  # protocol version
    info = unpickle()
    if isinstance(info, dict) and info.get("little_endian") is False:
        raise Refused("a big-endian torch stream")
    storages: dict[str, Storage] = {}
    obj = unpickle(storages)
    keys = unpickle()
    if not isinstance(keys, list):
        raise Refused("a torch stream without its storage keys")
    for key in keys:
        storage = storages.get(key)
        head = f.read(8)
        if storage is None or len(head) != 8:
            raise Refused("a torch stream whose storages do not match its keys")
        count = struct.unpack("<q", head)[0]
        if count != storage.flat.numel():
            raise Refused("a storage whose length does not match its header")
        storage.fill(f.read(count * storage.flat.element_size()))
    return obj


def _refuse(module: str, name: str) -> Refused:
    """The message for a global that is not on the allow-list."""
    if module.startswith("dnnlib.tflib"):
        return Refused(
            "it is a TensorFlow StyleGAN pickle; convert it to a PyTorch pickle "
            "first (see the docs: StyleGAN2 weights)"
        )
    return Refused(
        f"it asks to import {module}.{name}, which is not a network's data; "
        "the file may be malicious or of a kind lclr does not read"
    )


class _StreamUnpickler(pickle.Unpickler):
    """Unpickles with the stand-ins of ``allowed`` and nothing else.

    ``storages`` collects the storages that persistent ids create (legacy
    streams), each at most ``budget`` bytes; ``archive`` reads them from a
    zip file (torch's zip format) instead.
    """

    def __init__(self, f, allowed, *, storages=None, budget=0, archive=None):
        super().__init__(f)
        self.allowed = allowed
        self.storages = storages
        self.budget = budget
        self.archive = archive

    def find_class(self, module: str, name: str):
        target = self.allowed.get((module, name))
        if target is None:
            raise _refuse(module, name)
        return target

    def persistent_load(self, pid: Any) -> Storage:
        if self.storages is None and self.archive is None:
            raise Refused("a persistent reference outside a torch file")
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise Refused("a persistent reference that is not a storage")
        _, kind, key, _location, numel = pid[:5]
        if not isinstance(kind, StorageType) or not isinstance(key, str):
            raise Refused("a storage reference of an unknown type")
        if not isinstance(numel, int) or numel < 0:
            raise Refused("a storage reference with a bad size")
        if len(pid) > 5 and pid[5] is not None:
            raise Refused("a storage view of the pre-1.0 format")
        if self.archive is not None:
            return self.archive.storage(key, kind.dtype, numel)
        storage = self.storages.get(key)
        if storage is None:
            if numel * _itemsize(kind.dtype) > self.budget:
                raise Refused("a storage larger than the file that holds it")
            storage = self.storages[key] = Storage(kind.dtype, numel)
        return storage


class _Archive:
    """Storages of a torch zip file (``<prefix>/data/<key>``), read once."""

    def __init__(self, zf: zipfile.ZipFile, prefix: str):
        self.zf = zf
        self.prefix = prefix
        self.cache: dict[str, Storage] = {}

    def storage(self, key: str, dtype: torch.dtype, numel: int) -> Storage:
        if key not in self.cache:
            name = f"{self.prefix}/data/{key}"
            try:
                nbytes = self.zf.getinfo(name).file_size
            except KeyError:
                raise Refused(f"storage {key} is missing from the archive") from None
            if nbytes != numel * _itemsize(dtype):
                raise Refused(f"storage {key} does not have {numel} elements")
            storage = Storage(dtype, numel)
            storage.fill(self.zf.read(name))
            self.cache[key] = storage
        return self.cache[key]


def loads_stream(f: io.BytesIO) -> Any:
    """Unpickle one plain pickle stream (an NVIDIA ``.pkl``) safely."""
    check_nesting(f)
    with budget_of(len(f.getbuffer())):
        return _StreamUnpickler(f, ALLOWED).load()


def check_zip(zf: zipfile.ZipFile, file_bytes: int) -> None:
    """Refuse a zip file whose entries torch would not have written.

    torch stores every entry uncompressed, so no entry can hold more than
    the file does; a compressed or overlapping entry could unpack to any
    size.
    """
    total = 0
    for info in zf.infolist():
        if info.compress_type != zipfile.ZIP_STORED:
            raise Refused(
                f"its zip entry {info.filename} is compressed, which torch never does"
            )
        if info.file_size != info.compress_size:
            raise Refused(f"its zip entry {info.filename} has inconsistent sizes")
        total += info.compress_size
    if total > file_bytes:
        raise Refused("its zip entries are larger than the file")


def load_zip(path) -> Any:
    """Unpickle the ``data.pkl`` of a torch zip file safely."""
    file_bytes = os.path.getsize(path)
    with zipfile.ZipFile(path) as zf, budget_of(file_bytes):
        check_zip(zf, file_bytes)
        names = [n for n in zf.namelist() if n.endswith("data.pkl")]
        if len(names) != 1:
            raise Refused("a zip file that is not a torch checkpoint")
        prefix = names[0][: -len("data.pkl")].rstrip("/")
        data = io.BytesIO(zf.read(names[0]))
        check_nesting(data)
        return _StreamUnpickler(data, ALLOWED, archive=_Archive(zf, prefix)).load()


def _frozen(table: dict) -> dict:
    """The table with its functions wrapped so that pickles cannot edit them.

    Classes need no wrapper: BUILD on one fails (their ``__setstate__``
    wants an instance, and built-in types are immutable).
    """
    return {
        key: _Frozen(v, ".".join(key))
        if callable(v) and not isinstance(v, type) and not isinstance(v, StorageType)
        else v
        for key, v in table.items()
    }


# The allow-list: (module, name) as written in the pickle -> our stand-in.
PRIMITIVES = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,
    ("_codecs", "encode"): encode_latin1,
}
ALLOWED: dict[tuple[str, str], Any] = _frozen(
    {
        **PRIMITIVES,
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): (
            reconstruct_persistent
        ),
        ("dnnlib.util", "EasyDict"): EasyDict,
        ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): rebuild_parameter,
        ("torch.storage", "_load_from_bytes"): load_from_bytes,
        ("numpy", "dtype"): NumpyDType,
        ("numpy", "ndarray"): NumpyArray,
        ("numpy.core.multiarray", "scalar"): numpy_scalar,
        ("numpy._core.multiarray", "scalar"): numpy_scalar,
        ("numpy.core.multiarray", "_reconstruct"): NumpyArray,
        ("numpy._core.multiarray", "_reconstruct"): NumpyArray,
        **{("torch", name): StorageType(name) for name in STORAGE_DTYPES},
    }
)
# Inside a storage's own stream: only the storage types and containers.
INNER = _frozen(
    {
        **PRIMITIVES,
        **{("torch", name): StorageType(name) for name in STORAGE_DTYPES},
    }
)
