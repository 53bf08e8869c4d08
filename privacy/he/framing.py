"""Strict framing of a serialized CKKS vector, checked before TenSEAL reads a byte of it.

TenSEAL writes a CKKSVector as a protobuf message (tenseal/proto/tensors.proto):
  1 sizes        packed uint32: how many values each ciphertext holds
  2 ciphertexts  bytes, once per ciphertext: a SEAL ciphertext, i.e. SEAL's 16-byte
                 header (magic 0xA15E, header size, version, compression mode, two
                 reserved bytes, total size) and a zstd frame (RFC 8878: magic, frame
                 header, blocks, optional checksum)
  3 scale        double: the scale TenSEAL encodes plaintexts at for this vector

TenSEAL's parser is lenient. A damaged field tag makes it drop the field, and the
vector then crashes the whole process in `decrypt()` (a segmentation fault), or raises
an IndexError. SEAL and zstd ignore their reserved and unused bits, so a flip there
would pass unseen. So the framing is checked here first, byte for byte: the fields in
the order TenSEAL writes them, lengths that add up exactly, sizes that fit the ring,
SEAL's header, zstd's frame header and every block header, and a scale our packing
uses. What passes is then TenSEAL's, SEAL's and zstd's to reject, or it decrypts to
check slots that catch the change (packing.decrypt_vector).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

SEAL_MAGIC = b"\x5e\xa1"  # 0xA15E, little-endian
SEAL_HEADER_SIZE = 16
SEAL_COMPR_NONE, SEAL_COMPR_ZSTD = 0, 2
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"  # 0xFD2FB528, little-endian


class FramingError(ValueError):
    """The bytes are not a CKKS vector as TenSEAL, SEAL and zstd write one."""


def check_framing(blob: bytes, max_size: int, scales: Iterable[float]) -> None:
    """Raise FramingError unless `blob` is framed as a serialized CKKSVector whose every
    ciphertext holds 1..`max_size` values and whose scale is one of `scales`."""
    data = memoryview(blob)
    fields: list[tuple[int, int, memoryview]] = []  # (field number, wire type, value)
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 2:
            length, pos = _varint(data, pos)
            end = pos + length
        elif wire == 1:
            end = pos + 8
        else:
            raise FramingError(f"field {field} has wire type {wire}")
        if end > len(data):
            raise FramingError(f"field {field} runs past the end")
        fields.append((field, wire, data[pos:end]))
        pos = end
    layout = [(field, wire) for field, wire, _ in fields]
    count = len(fields) - 2
    if count < 1 or layout != [(1, 2)] + [(2, 2)] * count + [(3, 1)]:
        raise FramingError(f"fields {layout}, not sizes, ciphertexts, scale")
    sizes = _packed_varints(fields[0][2])
    if len(sizes) != count:
        raise FramingError(f"{len(sizes)} sizes for {count} ciphertexts")
    if not all(1 <= s <= max_size for s in sizes):
        raise FramingError(f"sizes {sizes[:4]} outside 1..{max_size}")
    (scale,) = struct.unpack("<d", fields[-1][2])
    if scale not in set(scales):
        raise FramingError(f"scale {scale!r} is not one this packing uses")
    for _, _, ciphertext in fields[1:-1]:
        _check_seal(ciphertext)


def _check_seal(ct: memoryview) -> None:
    if len(ct) < SEAL_HEADER_SIZE or bytes(ct[:2]) != SEAL_MAGIC or ct[2] != SEAL_HEADER_SIZE:
        raise FramingError("no SEAL header")
    if bytes(ct[6:8]) != b"\0\0":
        raise FramingError("SEAL header's reserved bytes are set")
    if int.from_bytes(ct[8:16], "little") != len(ct):
        raise FramingError("SEAL header's size differs from the ciphertext's")
    if ct[5] == SEAL_COMPR_ZSTD:
        _check_zstd(ct[SEAL_HEADER_SIZE:])
    elif ct[5] != SEAL_COMPR_NONE:
        raise FramingError(f"SEAL compression mode {ct[5]} is not one SEAL writes here")


def _check_zstd(frame: memoryview) -> None:
    """One zstd frame with no dictionary, unused or reserved bit, that ends at its last
    block (and checksum); RFC 8878, section 3.1.1."""
    if bytes(frame[:4]) != ZSTD_MAGIC or len(frame) < 5:
        raise FramingError("no zstd frame")
    descriptor = frame[4]
    fcs_flag, single_segment = descriptor >> 6, (descriptor >> 5) & 1
    unused, reserved = (descriptor >> 4) & 1, (descriptor >> 3) & 1
    checksum, dictionary = (descriptor >> 2) & 1, descriptor & 3
    if unused or reserved or dictionary:
        raise FramingError("zstd frame header has an unused, reserved or dictionary bit set")
    pos = 5 + (0 if single_segment else 1)  # window descriptor
    pos += (1 if single_segment else 0, 2, 4, 8)[fcs_flag]  # frame content size
    while True:
        if pos + 3 > len(frame):
            raise FramingError("zstd frame ends inside a block header")
        header = int.from_bytes(frame[pos : pos + 3], "little")
        last, kind, size = header & 1, (header >> 1) & 3, header >> 3
        if kind == 3:
            raise FramingError("zstd block of the reserved type")
        pos += 3 + (1 if kind == 1 else size)  # an RLE block stores one byte
        if pos > len(frame):
            raise FramingError("zstd block runs past the end")
        if last:
            break
    if pos + 4 * checksum != len(frame):
        raise FramingError("zstd frame does not end where its last block (and checksum) does")


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise FramingError("a varint runs past the end")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _packed_varints(data: memoryview) -> list[int]:
    values, pos = [], 0
    while pos < len(data):
        value, pos = _varint(data, pos)
        values.append(value)
    return values
