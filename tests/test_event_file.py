"""TensorBoard event files written without TensorFlow (samoe_jax/training/event_file.py), read back by TensorFlow
and compared record by record with TensorFlow's own writer."""

from __future__ import annotations

import glob
import os
import struct

import numpy as np

from samoe_jax.training import event_file

import tensorflow as tf  # pylint: disable=g-bad-import-order
from tensorflow.core.framework import summary_pb2  # pylint: disable=g-bad-import-order
from tensorflow.core.util import event_pb2  # pylint: disable=g-bad-import-order


def _events(logdir: str) -> list[event_pb2.Event]:
  path, = glob.glob(os.path.join(logdir, 'events.out.tfevents.*'))
  return [event_pb2.Event.FromString(record.numpy()) for record in tf.data.TFRecordDataset(path)]


def _tf_events(logdir: str, scalars: dict[str, float], step: int, text: tuple[str, str]) -> list[event_pb2.Event]:
  """The same summaries written by tf.summary.write, as metrics_writer wrote them before."""
  plugin = summary_pb2.SummaryMetadata.PluginData
  writer = tf.summary.create_file_writer(logdir)
  with writer.as_default():
    for name, value in scalars.items():
      tf.summary.write(name, tf.constant(value, tf.float32), step=step,
                       metadata=summary_pb2.SummaryMetadata(plugin_data=plugin(plugin_name='scalars')))
    tf.summary.write(text[0], tf.constant(text[1]), step=0,
                     metadata=summary_pb2.SummaryMetadata(plugin_data=plugin(plugin_name='text')))
  writer.close()
  return _events(logdir)


def test_crc32c_and_record_framing():
  assert event_file.crc32c(b'123456789') == 0xE3069283   # the CRC-32C check value
  assert event_file.crc32c(b'') == 0
  record = event_file.tfrecord(b'abc')
  assert struct.unpack('<Q', record[:8]) == (3,) and record[12:15] == b'abc' and len(record) == 19
  assert struct.unpack('<I', record[15:]) == (event_file.masked_crc32c(b'abc'),)


def test_records_equal_tensorflows_and_read_back(tmp_path):
  scalars = {'train/loss': 3.5, 'moe/layer1/expert_load/3': -1.25e-3, 'eval/perplexity': 1e30}
  text = ('config', 'd_model: 32\ncafé ☃')
  writer = event_file.EventFileWriter(str(tmp_path / 'ours'))
  assert os.path.basename(writer.path).startswith('events.out.tfevents.') and writer.path.endswith('.v2')
  writer.scalars(scalars, 2**40 + 7)
  writer.text(*text, 0)
  writer.close()
  ours = _events(str(tmp_path / 'ours'))
  theirs = _tf_events(str(tmp_path / 'tf'), scalars, 2**40 + 7, text)
  assert ours[0].file_version == theirs[0].file_version == 'brain.Event:2'
  assert len(ours) == len(theirs) == 5
  for a, b in zip(ours[1:], theirs[1:]):
    a.wall_time = b.wall_time = 0
    assert a.SerializeToString() == b.SerializeToString()   # byte for byte, but the time
  values = {v.tag: (e.step, tf.make_ndarray(v.tensor)) for e in ours[1:4] for v in e.summary.value}
  assert values['train/loss'] == (2**40 + 7, np.float32(3.5))
  assert values['moe/layer1/expert_load/3'][1] == np.float32(-1.25e-3)
  assert ours[4].summary.value[0].tensor.string_val == [text[1].encode()]
  # TensorFlow's own reader (CRCs checked) sees every record
  path, = glob.glob(str(tmp_path / 'ours' / 'events.out.tfevents.*'))
  assert len(list(tf.compat.v1.train.summary_iterator(path))) == 5


def test_two_writers_in_one_directory_get_two_files(tmp_path):
  first, second = event_file.EventFileWriter(str(tmp_path)), event_file.EventFileWriter(str(tmp_path))
  first.scalars({'a': 1.0}, 1)
  second.scalars({'a': 2.0}, 1)
  first.close()
  second.close()
  assert first.path != second.path and len(glob.glob(str(tmp_path / 'events.out.tfevents.*'))) == 2
