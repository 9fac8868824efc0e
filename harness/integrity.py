"""Sealed files: the bytes of a stored artefact followed by a CRC-32 trailer, written together and checked on read.

A torn write, a bad disk block or a copy cut short on a shared file system can leave a file whose header is intact
and whose payload is garbage; ``np.load`` and ``torch.load`` read such a file without a word (measured: a frame
store entry with garbage pixels changed a run's mAP; a flipped byte in a ``torch.save`` file loads silently). A
sealed file ends with a fixed 16-byte trailer::

    b"LOFICRC1"  crc32 (uint32, little-endian)  payload length (uint32, little-endian, modulo 2**32)

so a reader knows the payload is exactly what was written (zlib's CRC-32 detects every burst of up to 32 bits and
all but 2**-32 of other damage; it is a check against accidents, not against tampering). Files are written through
``harness.io.atomic_path``: a reader sees the old file or the whole new one.

What is sealed: frame-store entries (``harness.data.video.FrameCache``), feature files (``harness.pipeline.
features``) and checkpoints (``harness.pipeline.runtime.save_torch``); see docs/contracts.md § Stored artefacts.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import LofiError
from harness.io import atomic_path

PathLike = str | os.PathLike[str]
MAGIC = b"LOFICRC1"
_TRAILER = struct.Struct("<8sII")
TRAILER_BYTES = _TRAILER.size  # 16


class IntegrityError(LofiError):
    """A sealed file's payload does not match its checksum (or it has no trailer): the file is damaged."""

    def __init__(self, path: PathLike, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem


def write_sealed(path: PathLike, *parts: bytes | bytearray | memoryview) -> Path:
    """Write the concatenation of ``parts`` and its trailer atomically; returns ``path``."""
    crc, size = 0, 0
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        for part in parts:
            view = memoryview(part).cast("B")
            crc = zlib.crc32(view, crc)
            size += view.nbytes
            handle.write(view)
        handle.write(_TRAILER.pack(MAGIC, crc, size & 0xFFFFFFFF))
    return Path(path)


def read_sealed(path: PathLike) -> memoryview:
    """The payload of a sealed file (a writable view over a fresh buffer); ``IntegrityError`` naming the file when
    it has no trailer or its payload does not match it. A missing file is the OS's ``FileNotFoundError``."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        buf = bytearray(size)
        got = handle.readinto(buf)
    if got != size:  # the file shrank while being read
        raise IntegrityError(path, f"read {got} of {size} bytes (the file changed while being read)")
    if size < TRAILER_BYTES:
        raise IntegrityError(path, f"{size} bytes, too short to hold a checksum trailer (truncated or not ours)")
    view = memoryview(buf)
    magic, crc, length = _TRAILER.unpack_from(view, size - TRAILER_BYTES)
    payload = view[: size - TRAILER_BYTES]
    if magic != MAGIC:
        raise IntegrityError(path, "no checksum trailer (truncated, damaged, or written by an older version)")
    if length != payload.nbytes & 0xFFFFFFFF:
        raise IntegrityError(path, f"holds {payload.nbytes} payload bytes where {length} were written (truncated)")
    if zlib.crc32(payload) != crc:
        raise IntegrityError(path, "checksum mismatch (the file was damaged after it was written)")
    return payload


def file_crc32(path: PathLike, chunk: int = 1 << 20) -> int:
    """The CRC-32 of a whole file (for files whose checksum lives beside them, e.g. the prepared store's sidecar)."""
    crc = 0
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb") as handle:
        while n := handle.readinto(buf):
            crc = zlib.crc32(view[:n], crc)
    return crc


# ---------------------------------------------------------------------------------------------- numpy arrays
def _npy_header(arr: np.ndarray) -> bytes:
    header = np.lib.format.header_data_from_array_1_0(arr)
    buffer = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(buffer, header)
    except ValueError:  # a header over 64 KiB (a very long shape): format 2.0
        buffer = io.BytesIO()
        np.lib.format.write_array_header_2_0(buffer, header)
    return buffer.getvalue()


def save_array(path: PathLike, arr: np.ndarray) -> Path:
    """A sealed ``.npy`` file: numpy's own format (header + data, C order), then the trailer."""
    arr = np.ascontiguousarray(arr)
    if arr.dtype.hasobject:
        raise ValueError(f"{path}: object arrays cannot be stored")
    return write_sealed(path, _npy_header(arr), arr.reshape(-1).view(np.uint8))


def load_array(path: PathLike) -> np.ndarray:
    """The array of a sealed ``.npy`` file, checked (``IntegrityError`` naming the file otherwise); no extra copy
    of the data: the array is a view over the buffer the file was read into."""
    payload = read_sealed(path)
    head = io.BytesIO(payload[: min(payload.nbytes, 1 << 16)].tobytes())
    try:
        version = np.lib.format.read_magic(head)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(head)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(head)
    except ValueError as exc:
        raise IntegrityError(path, f"checksum matches but the .npy header is unreadable ({exc})") from None
    count = int(np.prod(shape, dtype=np.int64))
    offset = head.tell()
    if dtype.hasobject or offset + count * dtype.itemsize != payload.nbytes:
        raise IntegrityError(path, f"the .npy header ({dtype} {shape}) does not match the {payload.nbytes} bytes")
    arr = np.frombuffer(payload, dtype=dtype, count=count, offset=offset)
    return arr.reshape(shape, order="F" if fortran else "C")


# ---------------------------------------------------------------------------------------------- torch objects
def save_torch_sealed(path: PathLike, obj: Any) -> Path:
    """``torch.save`` into memory, then a sealed file (a full disk is an ``OSError`` naming ``path``)."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return write_sealed(path, buffer.getbuffer())


def load_torch_sealed(path: PathLike) -> Any:
    """The object of a sealed ``torch.save`` file (tensors on the CPU, ``weights_only``), checked first."""
    import torch

    payload = read_sealed(path)
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
