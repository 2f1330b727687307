"""TensorBoard event files in plain Python (no TensorFlow, no tensorboard package, no protobuf library).

`EventFileWriter(logdir)` writes `events.out.tfevents.<time>.<host>.<pid>.<n>.v2`: TFRecord framing (length, masked
CRC-32C of the length, the record, masked CRC-32C of the record) around hand-encoded `Event` protocol buffers
(tensorflow/core/util/event.proto): first one with file_version 'brain.Event:2', then one per summary value, as
tf.summary.write writes them: a scalar is a float32 tensor (tensor_content, shape []) with plugin 'scalars', a text
a string tensor with plugin 'text'. TensorFlow's summary_iterator and TensorBoard read them
(tests/test_event_file.py compares the records with TensorFlow's own writer).
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
import time

# ---------------------------------------------------------------------------------------------- CRC-32C


def _crc32c_table() -> tuple[int, ...]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    table.append(crc)
  return tuple(table)


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli) of `data`, as TFRecord files use it."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
  """One TFRecord: uint64 length, masked CRC of the length, the data, masked CRC of the data (little-endian)."""
  length = struct.pack('<Q', len(data))
  return length + struct.pack('<I', masked_crc32c(length)) + data + struct.pack('<I', masked_crc32c(data))


# ---------------------------------------------------------------------------------------------- protobuf


def _varint(value: int) -> bytes:
  value &= (1 << 64) - 1   # negative int64 as two's complement, as protobuf encodes it
  out = bytearray()
  while True:
    bits, value = value & 0x7F, value >> 7
    out.append(bits | (0x80 if value else 0))
    if not value:
      return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
  return _varint(field << 3 | wire_type)


def _bytes_field(field: int, data: bytes) -> bytes:
  return _key(field, 2) + _varint(len(data)) + data


def _int_field(field: int, value: int) -> bytes:
  return _key(field, 0) + _varint(value)


DT_FLOAT, DT_STRING = 1, 7   # tensorflow/core/framework/types.proto
_SCALAR_SHAPE = _bytes_field(2, b'')   # TensorProto.tensor_shape: an empty TensorShapeProto (rank 0)


def _metadata(plugin: str) -> bytes:
  """SummaryMetadata{plugin_data: PluginData{plugin_name}}."""
  return _bytes_field(1, _bytes_field(1, plugin.encode()))


def float_tensor(value: float) -> bytes:
  """TensorProto of a float32 scalar: dtype, shape [], tensor_content (4 bytes, little-endian)."""
  return _int_field(1, DT_FLOAT) + _SCALAR_SHAPE + _bytes_field(4, struct.pack('<f', value))


def string_tensor(text: str) -> bytes:
  """TensorProto of a string scalar: dtype, shape [], string_val."""
  return _int_field(1, DT_STRING) + _SCALAR_SHAPE + _bytes_field(8, text.encode('utf-8'))


def summary_event(wall_time: float, step: int, tag: str, plugin: str, tensor: bytes) -> bytes:
  """Event{wall_time, step, summary: Summary{value: [Value{tag, tensor, metadata}]}} (TensorFlow's field order)."""
  value = _bytes_field(1, tag.encode('utf-8')) + _bytes_field(8, tensor) + _bytes_field(9, _metadata(plugin))
  return (_key(1, 1) + struct.pack('<d', wall_time) + _int_field(2, step)
          + _bytes_field(5, _bytes_field(1, value)))


def version_event(wall_time: float) -> bytes:
  """Event{wall_time, file_version: 'brain.Event:2'}: the first record of every event file."""
  return _key(1, 1) + struct.pack('<d', wall_time) + _bytes_field(3, b'brain.Event:2')


# ---------------------------------------------------------------------------------------------- the writer

_FILE_NUMBER = itertools.count()


class EventFileWriter:
  """Appends summaries to a new event file in `logdir` (created); every call is flushed to disk."""

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    now = time.time()
    name = f'events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}.{next(_FILE_NUMBER)}.v2'
    self.path = os.path.join(logdir, name)
    self._file = open(self.path, 'wb')  # pylint: disable=consider-using-with
    self._append([version_event(now)])

  def _append(self, events: list[bytes]) -> None:
    self._file.write(b''.join(tfrecord(event) for event in events))
    self._file.flush()

  def scalars(self, values: dict[str, float], step: int) -> None:
    """One float32 scalar summary (plugin 'scalars') per name."""
    now = time.time()
    self._append([summary_event(now, step, name, 'scalars', float_tensor(float(value)))
                  for name, value in values.items()])

  def text(self, name: str, text: str, step: int) -> None:
    """A text summary (plugin 'text')."""
    self._append([summary_event(time.time(), step, name, 'text', string_tensor(text))])

  def close(self) -> None:
    self._file.close()
