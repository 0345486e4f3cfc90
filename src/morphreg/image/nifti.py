"""What ITK's NIfTI reader does not check: a truncated payload and NaN/inf voxels.

ITK reads a .nii or .nii.gz whose data stops half way without an error (the missing part as zeros)
and turns NaN/inf voxels of float files into zeros, so neither can be seen in the image it returns.
:func:`check_nifti_payload` reads the header (NIfTI-1 or NIfTI-2, either byte order) and streams the
payload once (decompressing .nii.gz: about 0.1 s for a 27 MB brain volume), counting the bytes and the
non-finite values of float data.
"""
from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from morphreg.errors import MorphregError

# NIfTI datatype code -> numpy dtype of one stored value (complex types as float pairs).
_FLOAT_TYPES = {16: "f4", 32: "f4", 64: "f8", 1792: "f8"}
_CHUNK = 8 << 20


def _header(head: bytes, path: Path) -> tuple[int, int, int]:
    """(vox_offset, payload bytes, datatype) from the first 540 bytes of a NIfTI file."""
    for order in "<>":
        size = struct.unpack(order + "i", head[:4])[0]
        if size == 348 and len(head) >= 348:
            dims = struct.unpack(order + "8h", head[40:56])
            datatype, bitpix = struct.unpack(order + "2h", head[70:74])
            raw_offset = struct.unpack(order + "f", head[108:112])[0]
            if not np.isfinite(raw_offset):
                raise MorphregError(f"NIfTI header has an invalid data offset ({raw_offset})", path)
            offset = int(raw_offset)
            break
        if size == 540 and len(head) >= 540:
            datatype, bitpix = struct.unpack(order + "2h", head[12:16])
            dims = struct.unpack(order + "8q", head[16:80])
            offset = int(struct.unpack(order + "q", head[168:176])[0])
            break
    else:
        raise MorphregError("not a NIfTI file (bad header size)", path)
    ndim = dims[0]
    if not 1 <= ndim <= 7 or any(d < 1 for d in dims[1: ndim + 1]):
        raise MorphregError(f"NIfTI header has invalid dimensions {list(dims[1: ndim + 1])}", path)
    count = int(np.prod([int(d) for d in dims[1: ndim + 1]], dtype=np.float64))
    return max(offset, 352 if size == 348 else 544), count * bitpix // 8, datatype


def _open(path: Path):
    """By content, not name: ITK also reads an uncompressed file called .nii.gz."""
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def check_nifti_payload(path: str | Path) -> int:
    """Number of NaN/inf values in a single-file NIfTI image (.nii, .nii.gz).

    Raises MorphregError naming the file when the payload is shorter than the header says (a
    truncated file) or the gzip stream is broken. Other files (e.g. .hdr/.img pairs) return 0.
    """
    path = Path(path)
    try:
        with _open(path) as f:
            head = f.read(544)
            if len(head) < 348:
                raise MorphregError(f"NIfTI file is truncated ({len(head)} bytes, the header alone is 348)", path)
            offset, expected, datatype = _header(head, path)
            f.seek(offset)  # a gzip stream seeks by decompressing (backwards: from its start)
            dtype = _FLOAT_TYPES.get(datatype)
            if dtype is not None:
                dtype = np.dtype(dtype).newbyteorder("<" if struct.unpack("<i", head[:4])[0] in (348, 540) else ">")
            got, bad, rest = 0, 0, b""
            while got < expected:
                block = f.read(min(_CHUNK, expected - got))
                if not block:
                    break
                got += len(block)
                if dtype is not None:
                    data = rest + block
                    usable = len(data) - len(data) % dtype.itemsize
                    bad += int((~np.isfinite(np.frombuffer(data[:usable], dtype))).sum())
                    rest = data[usable:]
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise MorphregError(f"compressed data is truncated or corrupt ({exc})", path) from None
    except OSError as exc:
        raise MorphregError(f"cannot read: {exc.strerror or exc}", path) from None
    if got < expected:
        raise MorphregError(f"NIfTI file is truncated: {got} of {expected} data bytes present", path)
    return bad
