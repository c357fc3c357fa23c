"""A snapshot file's own SHA-256, kept in its safetensors metadata (safetensors has no checksum).

The digest covers the whole file: the 8-byte header length, the JSON header and every tensor
byte, with the digest's own 64 characters read as `PLACEHOLDER`. The writer saves the file
with `PLACEHOLDER` as the value of metadata key `sha256`, hashes the file (`seal`) and
overwrites the placeholder in place with the hex digest: same length, so the header stays
valid and nothing moves. The reader (`verify_digest`) puts the placeholder back while hashing.
Any flipped byte, in a tensor or in the header (a step, an lr), fails the check.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from pathlib import Path

from forensics.rundir.format import DIGEST_KEY, CorruptFileError

PLACEHOLDER = "sha256-pending." + "." * 49  # 64 characters, the length of a hex SHA-256
_HEX = re.compile(r"[0-9a-f]{64}")
_MAX_HEADER = 100_000_000  # safetensors' own limit on the header size
_BLOCK = 1 << 20


def seal(path: Path | str) -> str:
    """Replace `PLACEHOLDER` in the header of the safetensors file at `path` by the file's
    SHA-256 (hex), in place; return it.

    Raises:
        ValueError: the header holds the placeholder not exactly once (nothing is changed).
    """
    with open(path, "r+b") as f:
        prefix, header = _header(f, path)
        value = _quoted(PLACEHOLDER)
        if header.count(value) != 1:
            raise ValueError(f"{path}: the digest placeholder appears {header.count(value)} times")
        digest = _hash(f, prefix, header)
        f.seek(len(prefix) + header.index(value) + 1)
        f.write(digest.encode())
    return digest


def verify_digest(path: Path | str) -> bool:
    """True when the file's recorded SHA-256 matches its bytes; False when it records none
    (written before digests: "unverified").

    Raises:
        CorruptFileError: naming the file, when the digest does not match or is malformed.
    """
    with open(path, "rb") as f:
        prefix, header = _header(f, path)
        try:
            recorded = (json.loads(header).get("__metadata__") or {}).get(DIGEST_KEY)
        except (ValueError, AttributeError) as e:
            raise CorruptFileError(path, f"unreadable snapshot header ({e})") from None
        if recorded is None:
            return False
        if not isinstance(recorded, str) or not _HEX.fullmatch(recorded) \
                or header.count(_quoted(recorded)) != 1:
            raise CorruptFileError(path, f"malformed sha256 digest {str(recorded)[:80]!r} in its metadata")
        actual = _hash(f, prefix, header.replace(_quoted(recorded), _quoted(PLACEHOLDER)))
    if actual != recorded:
        raise CorruptFileError(path, f"content does not match its recorded sha256 digest "
                                     f"(recorded {recorded[:12]}…, found {actual[:12]}…): "
                                     "the file changed after it was written")
    return True


def _quoted(text: str) -> bytes:
    return b'"' + text.encode() + b'"'


def _header(f, path) -> tuple[bytes, bytes]:
    """(the 8-byte length prefix, the JSON header bytes) of an open safetensors file."""
    prefix = f.read(8)
    if len(prefix) < 8:
        raise CorruptFileError(path, "truncated snapshot (no header)")
    (size,) = struct.unpack("<Q", prefix)
    header = f.read(min(size, _MAX_HEADER + 1))
    if size > _MAX_HEADER or len(header) != size:
        raise CorruptFileError(path, f"truncated or corrupt snapshot (header of {size} bytes)")
    return prefix, header


def _hash(f, prefix: bytes, header: bytes) -> str:
    """SHA-256 of `prefix + header + the rest of f` (f positioned just after the header)."""
    h = hashlib.sha256(prefix)
    h.update(header)
    buf = bytearray(_BLOCK)
    view = memoryview(buf)
    while n := f.readinto(buf):
        h.update(view[:n])
    return h.hexdigest()
