"""A minimal GGUF header reader: magic, version, key/value metadata and tensor shapes.

Only what ``/api/create`` and ``/api/show`` need. Large arrays (token lists) are skipped
rather than kept, so reading the header of a multi-GiB file stays cheap.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any, BinaryIO

MAGIC_LE = b"GGUF"
MAGIC_BE = b"FUGG"
_MAX_KEPT_ARRAY = 64
_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING, _ARRAY, _FLOAT32 = 8, 9, 6

# ggml file types as Go's FileType.String() names them.
FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    24: "IQ4_NL",
    30: "IQ4_XS",
    32: "BF16",
}


class GGUFError(ValueError):
    """The data is not a readable GGUF header."""


@dataclass
class GGUFInfo:
    """What the emulator knows about one GGUF file."""

    version: int = 0
    kv: dict[str, Any] = field(default_factory=dict)
    array_lengths: dict[str, int] = field(default_factory=dict)
    parameter_count: int = 0
    complete: bool = False

    @property
    def architecture(self) -> str:
        """``general.architecture`` or an empty string."""
        return str(self.kv.get("general.architecture", ""))

    @property
    def kind(self) -> str:
        """``general.type`` (model, adapter, projector, mmproj) or an empty string."""
        return str(self.kv.get("general.type", ""))

    def arch_value(self, key: str) -> Any:
        """``<architecture>.<key>`` or None."""
        return self.kv.get(f"{self.architecture}.{key}")

    def file_type_name(self) -> str:
        """The quantization level shown as ``quantization_level``."""
        value = self.kv.get("general.file_type")
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return FILE_TYPES.get(value, "unknown")
        return "unknown"


def has_gguf_magic(head: bytes) -> bool:
    """True when ``head`` starts with the GGUF magic (either byte order)."""
    return head[:4] in (MAGIC_LE, MAGIC_BE)


def read_gguf(path: str) -> GGUFInfo:
    """Read the header of ``path``; raises GGUFError when the magic is wrong.

    A header that breaks off after the magic yields a partial result (``complete`` False)
    instead of an error, because Ollama only checks the magic at create time.
    """
    with open(path, "rb") as fh:
        head = fh.read(4)
        if not has_gguf_magic(head):
            raise GGUFError("supplied file was not in GGUF format")
        reader = _Reader(fh, "<" if head == MAGIC_LE else ">")
        info = GGUFInfo()
        try:
            _read_body(reader, info)
            info.complete = True
        except (struct.error, GGUFError, UnicodeDecodeError, MemoryError):
            pass
        return info


def _read_body(reader: _Reader, info: GGUFInfo) -> None:
    info.version = reader.scalar("I")
    if info.version not in (1, 2, 3):
        raise GGUFError(f"unsupported GGUF version {info.version}")
    count_fmt = "I" if info.version == 1 else "Q"
    tensor_count, kv_count = reader.scalar(count_fmt), reader.scalar(count_fmt)
    for _ in range(kv_count):
        key = reader.string()
        value_type = reader.scalar("I")
        value, length = reader.value(value_type)
        info.kv[key] = value
        if length is not None:
            info.array_lengths[key] = length
    for _ in range(tensor_count):
        reader.string()
        dims = [reader.scalar("Q") for _ in range(reader.scalar("I"))]
        reader.scalar("I")
        reader.scalar("Q")
        info.parameter_count += math.prod(dims) if dims else 0


class _Reader:
    def __init__(self, fh: BinaryIO, order: str) -> None:
        self._fh = fh
        self._order = order

    def scalar(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        data = self._fh.read(size)
        if len(data) != size:
            raise GGUFError("unexpected end of GGUF header")
        return struct.unpack(self._order + fmt, data)[0]

    def string(self) -> str:
        length = self.scalar("Q")
        if length > 1 << 24:
            raise GGUFError("string too long")
        data = self._fh.read(length)
        if len(data) != length:
            raise GGUFError("unexpected end of GGUF header")
        return data.decode("utf-8")

    def value(self, value_type: int) -> tuple[Any, int | None]:
        if value_type == _STRING:
            return self.string(), None
        if value_type == _ARRAY:
            item_type, count = self.scalar("I"), self.scalar("Q")
            items = []
            for _ in range(count):
                item = self.value(item_type)[0]
                if count <= _MAX_KEPT_ARRAY:
                    items.append(item)
            return items, count
        if value_type not in _SCALARS:
            raise GGUFError(f"unknown GGUF value type {value_type}")
        value = self.scalar(_SCALARS[value_type])
        if value_type == _FLOAT32:
            value = shortest_float32(value)
        return value, None


def shortest_float32(value: float) -> float:
    """The shortest decimal that round-trips through float32, as Go prints a float32."""
    if not math.isfinite(value):
        return value
    packed = struct.pack("<f", value)
    for digits in range(1, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.pack("<f", candidate) == packed:
            return candidate
    return value
