"""Reading a damaged MCAP or rosbag2 SQLite file front to back, without its index: every message before the damage.

rosbags refuses a truncated file outright (an MCAP without its footer, an SQLite file shorter than its header says),
which would throw away every frame before the damage; :class:`mfuser_ros.replay.bagio.BagInput` falls back to these
readers, which raise :class:`BagReadError` naming the file and the byte or row where the data ends, after yielding
everything before it.
"""

from __future__ import annotations

import shutil
import sqlite3
import struct
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mfuser_model.errors import MFuserError

__all__ = ["BagReadError", "mcap_salvage", "salvage", "sqlite_salvage"]

_MCAP_MAGIC = b"\x89MCAP0\r\n"


class BagReadError(MFuserError):
    """A bag cannot be read (further): the message names the file and, where known, the position."""


def _u16(b: bytes, o: int) -> int:
    return struct.unpack_from("<H", b, o)[0]


def _u32(b: bytes, o: int) -> int:
    return struct.unpack_from("<I", b, o)[0]


def _u64(b: bytes, o: int) -> int:
    return struct.unpack_from("<Q", b, o)[0]


def _mcap_string(b: bytes, o: int) -> tuple[str, int]:
    n = _u32(b, o)
    return b[o + 4: o + 4 + n].decode("utf-8"), o + 4 + n


def _mcap_decompress(data: bytes, compression: str, size: int) -> bytes:
    if compression == "":
        return data
    if compression == "zstd":
        try:
            from compression import zstd  # type: ignore[import-not-found]  # noqa: PLC0415  (Python 3.14+)
        except ImportError:
            from backports import zstd  # noqa: PLC0415
        return zstd.decompress(data)
    if compression == "lz4":
        import lz4.frame  # noqa: PLC0415

        return lz4.frame.decompress(data)
    msg = f"unsupported chunk compression {compression!r}"
    raise ValueError(msg)


def _mcap_records(data: bytes, base: int, cut: bool = False) -> Iterator[tuple[int, int, bytes]]:
    """(opcode, absolute offset, content) of each record in an in-memory record stream (a chunk's body).

    ``cut``: the stream is the part of a chunk before the end of a truncated file; stop at its first incomplete
    record instead of raising.
    """
    pos = 0
    while pos < len(data):
        if pos + 9 > len(data):
            if cut:
                return
            msg = f"record header cut short at byte {base + pos}"
            raise ValueError(msg)
        op, length = data[pos], _u64(data, pos + 1)
        if pos + 9 + length > len(data):
            if cut:
                return
            msg = f"record 0x{op:02x} at byte {base + pos} runs past its chunk"
            raise ValueError(msg)
        yield op, base + pos, data[pos + 9: pos + 9 + length]
        pos += 9 + length


def _mcap_cut_chunk(content: bytes, pos: int, handle: Any) -> list[tuple[str, str, int, bytes]]:
    """The complete messages of an uncompressed chunk cut off by the end of the file (its CRC covers the whole
    chunk and cannot be checked; each record is length-prefixed, so a complete one is whole). Compressed: none."""
    try:
        compression, o = _mcap_string(content, 28)
        if compression != "":
            return []
        records = content[o + 8:]
        return [m for op, _, c in _mcap_records(records, pos + 9 + o + 8, cut=True) if (m := handle(op, c)) is not None]
    except (ValueError, struct.error, UnicodeDecodeError):
        return []


def mcap_salvage(path: Path) -> Iterator[tuple[str, str, int, bytes]]:
    """Read an MCAP file front to back, without its index: yield ``(topic, msgtype, log_time_ns, raw)``.

    Raises:
        BagReadError: at the first record that is cut short or corrupt (after yielding every earlier message),
            or when the file ends before its footer; the message names the file and the byte offset.
    """
    schemas: dict[int, str] = {}
    channels: dict[int, tuple[str, int]] = {}

    def handle(op: int, content: bytes) -> tuple[str, str, int, bytes] | None:
        if op == 0x03:  # Schema: id, name, encoding, data
            schemas[_u16(content, 0)] = _mcap_string(content, 2)[0]
        elif op == 0x04:  # Channel: id, schema_id, topic, message_encoding, metadata
            channels[_u16(content, 0)] = (_mcap_string(content, 4)[0], _u16(content, 2))
        elif op == 0x05:  # Message: channel_id, sequence, log_time, publish_time, data
            channel_id = _u16(content, 0)
            if channel_id not in channels:
                msg = f"message on channel {channel_id}, which was never defined"
                raise ValueError(msg)
            topic, schema_id = channels[channel_id]
            return topic, schemas.get(schema_id, ""), _u64(content, 6), bytes(content[22:])
        return None

    size = path.stat().st_size
    with path.open("rb") as f:
        if f.read(8) != _MCAP_MAGIC:
            msg = f"{path}: not an MCAP file (bad magic at byte 0)"
            raise BagReadError(msg)
        while True:
            pos = f.tell()
            head = f.read(9)
            if not head:
                msg = f"{path}: file ends at byte {pos} without the MCAP footer (truncated)"
                raise BagReadError(msg)
            if len(head) < 9:
                msg = f"{path}: record header at byte {pos} is cut short (truncated file, {size} bytes)"
                raise BagReadError(msg)
            op, length = head[0], _u64(head, 1)
            if op in (0x02, 0x0F):  # Footer or DataEnd: every message has been seen
                return
            if length > size - pos - 9:
                msg = (f"{path}: record 0x{op:02x} at byte {pos} declares {length} bytes but the file ends after "
                       f"{size - pos - 9} (truncated)")
                if op == 0x06:  # the messages of an uncompressed chunk that end before the cut are still whole
                    yield from _mcap_cut_chunk(f.read(), pos, handle)
                raise BagReadError(msg)
            content = f.read(length)
            try:
                if op == 0x06:  # Chunk: start, end, uncompressed size, crc, compression, records
                    usize, crc = _u64(content, 16), _u32(content, 24)
                    compression, o = _mcap_string(content, 28)
                    records = _mcap_decompress(content[o + 8: o + 8 + _u64(content, o)], compression, usize)
                    if len(records) != usize or (crc and zlib.crc32(records) != crc):
                        msg = "chunk size or checksum mismatch"
                        raise ValueError(msg)
                    # Decode the whole chunk before yielding, so a corrupt chunk yields nothing half-read.
                    found = [m for op_, _, c in _mcap_records(records, pos) if (m := handle(op_, c)) is not None]
                    yield from found
                elif (m := handle(op, content)) is not None:
                    yield m
            except (ValueError, struct.error, UnicodeDecodeError, MemoryError, RuntimeError) as err:
                msg = f"{path}: corrupt record 0x{op:02x} at byte {pos}: {err}"
                raise BagReadError(msg) from err


def sqlite_salvage(path: Path) -> Iterator[tuple[str, str, int, bytes]]:
    """Read a rosbag2 SQLite file row by row: yield ``(topic, msgtype, timestamp_ns, raw)`` in row order.

    SQLite refuses a file shorter than the page count in its header; a temporary copy with the count set to the
    pages that exist opens, and rows read until the first one whose pages are missing.

    Raises:
        BagReadError: at the first unreadable row (after yielding every earlier one), naming the file and row.
    """
    with tempfile.TemporaryDirectory(prefix="mfuser-salvage-") as tmp:
        copy = Path(tmp) / path.name
        shutil.copyfile(path, copy)
        with copy.open("r+b") as f:
            header = f.read(100)
            if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
                msg = f"{path}: not an SQLite database (bad header)"
                raise BagReadError(msg)
            page_size = struct.unpack(">H", header[16:18])[0]
            page_size = 65536 if page_size == 1 else page_size
            file_size = copy.stat().st_size
            pages = file_size // page_size
            truncated = struct.unpack(">I", header[28:32])[0] > pages or file_size % page_size != 0
            f.truncate(pages * page_size)
            f.seek(28)
            f.write(struct.pack(">I", pages))
        con = sqlite3.connect(f"file:{copy}?mode=ro&immutable=1", uri=True)
        last_row = 0
        try:
            try:
                topics = {i: (n, t) for i, n, t in con.execute("SELECT id, name, type FROM topics")}
            except sqlite3.DatabaseError as err:
                msg = f"{path}: the topics table is unreadable ({err})"
                raise BagReadError(msg) from err
            try:
                for row_id, topic_id, timestamp, data in con.execute(
                        "SELECT id, topic_id, timestamp, data FROM messages"):
                    last_row = row_id
                    name, msgtype = topics.get(topic_id, (f"<topic {topic_id}>", ""))
                    yield name, msgtype, int(timestamp), bytes(data)
            except sqlite3.DatabaseError as err:
                msg = f"{path}: unreadable after message row {last_row} ({err}; truncated or corrupt file)"
                raise BagReadError(msg) from err
            if truncated:  # the patched copy reads "complete", but rows past the cut are gone
                msg = f"{path}: the file is shorter than its header says (truncated after message row {last_row})"
                raise BagReadError(msg)
        finally:
            con.close()


def salvage(files: Sequence[Path]) -> Iterator[tuple[str, str, int, bytes]]:
    for file in files:
        if file.suffix == ".mcap":
            yield from mcap_salvage(file)
        else:
            yield from sqlite_salvage(file)
