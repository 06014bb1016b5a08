"""TensorBoard event files of scalars, written with the standard library alone.

An event file is a sequence of records, each framed as TFRecords are: the length (uint64, little-endian), the masked
CRC-32C of those 8 bytes, the bytes of one `Event` protocol buffer (tensorflow/core/util/event.proto), and their
masked CRC-32C. The first event names the file version ('brain.Event:2'); each later one holds one step's scalars,
a `Summary` of (tag, simple_value) values. Those few fields are encoded here in the protocol buffer wire format,
so that training writes TensorBoard's files without TensorFlow, tensorboardX or torch (tensorboardX imports torch
when it is installed: 1.4 s at every start). TensorBoard (`tensorboard --logdir RUN/tb`) reads them as it reads any
other; tests/test_events.py reads them back with TensorBoard's own reader.
"""
from __future__ import annotations

import os
import socket
import struct
import time


def _crc32c_table() -> tuple[int, ...]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # the Castagnoli polynomial, reflected
    table.append(crc)
  return tuple(table)


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  """The CRC that TFRecords store: rotated right by 15 bits plus a constant."""
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record(payload: bytes) -> bytes:
  """One TFRecord: length, its masked CRC, the payload, its masked CRC."""
  length = struct.pack('<Q', len(payload))
  return length + struct.pack('<I', masked_crc32c(length)) + payload + struct.pack('<I', masked_crc32c(payload))


def _varint(value: int) -> bytes:
  if value < 0:
    value += 1 << 64  # int64 fields: two's complement, ten bytes
  out = bytearray()
  while True:
    low, value = value & 0x7F, value >> 7
    out.append(low | (0x80 if value else 0))
    if not value:
      return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
  return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def event(wall_time: float, step: int = 0, file_version: str = '', scalars: dict[str, float] | None = None) -> bytes:
  """An `Event`: wall_time (field 1, double), step (2, int64), file_version (3, string) or summary (5), whose
  values (Summary field 1) each hold a tag (1, string) and a simple_value (2, float)."""
  out = _varint(1 << 3 | 1) + struct.pack('<d', wall_time) + _varint(2 << 3 | 0) + _varint(step)
  if file_version:
    out += _length_delimited(3, file_version.encode())
  if scalars:
    values = b''.join(
        _length_delimited(1, _length_delimited(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack('<f', value))
        for tag, value in scalars.items())
    out += _length_delimited(5, values)
  return out


class EventWriter:
  """Appends scalar events to a new file DIR/events.out.tfevents.TIME.HOST.PID (one file per writer, so that a
  resumed run adds a file beside the earlier ones), flushed at every write."""

  def __init__(self, directory: str):
    os.makedirs(directory, exist_ok=True)
    name = f'events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}'
    self.path = os.path.join(directory, name)
    self._file = open(self.path, 'ab')
    self._write(event(time.time(), file_version='brain.Event:2'))

  def _write(self, payload: bytes) -> None:
    self._file.write(record(payload))
    self._file.flush()

  def scalars(self, step: int, values: dict[str, float]) -> None:
    if values:
      self._write(event(time.time(), step, scalars=values))

  def close(self) -> None:
    self._file.close()
