"""training/events.py: the event files it writes read back with TensorBoard's own reader (event_file_loader checks
both CRCs of every record and parses each Event with TensorBoard's protos), and its CRC-32C is the standard one."""
import math
import struct

from tensorboard.backend.event_processing import event_accumulator, event_file_loader

from nlhf_jax.training import events
from nlhf_jax.training.metrics import MetricWriter


def test_crc32c_known_answers():
  assert events.crc32c(b'123456789') == 0xE3069283  # the check value of CRC-32C (Castagnoli)
  assert events.crc32c(b'') == 0
  assert events.crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720, B.4: 32 bytes of zeros


def test_scalars_read_back_with_tensorboards_reader(tmp_path):
  writer = events.EventWriter(str(tmp_path))
  steps = {0: {'loss': 2.5, 'val/accuracy': 0.125}, 7: {'loss': -1e-8}, 2**40: {'loss': math.inf}}
  for step, values in steps.items():
    writer.scalars(step, values)
  writer.close()
  read = list(event_file_loader.LegacyEventFileLoader(writer.path).Load())
  assert read[0].file_version == 'brain.Event:2'
  got = {e.step: {v.tag: v.simple_value for v in e.summary.value} for e in read[1:]}
  assert got == {s: {k: struct.unpack('<f', struct.pack('<f', v))[0] for k, v in vals.items()}
                 for s, vals in steps.items()}
  assert all(e.wall_time > 1e9 for e in read)


def test_a_damaged_record_is_refused_by_tensorboard(tmp_path):
  writer = events.EventWriter(str(tmp_path))
  writer.scalars(1, {'loss': 1.0})
  writer.close()
  data = bytearray(open(writer.path, 'rb').read())
  data[-6] ^= 0xFF  # a byte of the last event's payload: its CRC no longer matches
  open(writer.path, 'wb').write(bytes(data))
  read = list(event_file_loader.LegacyEventFileLoader(writer.path).Load())
  assert len(read) == 1  # the file version alone; TensorBoard drops the damaged record


def test_metric_writer_events_load_in_tensorboard(tmp_path):
  writer = MetricWriter(str(tmp_path))
  for step in (10, 20):
    writer.write(step, {'loss': 1.0 / step, 'grad_norm': float(step)})
  writer.close()
  acc = event_accumulator.EventAccumulator(str(tmp_path / 'tb'))
  acc.Reload()
  assert sorted(acc.Tags()['scalars']) == ['grad_norm', 'loss']
  assert [(e.step, round(e.value, 6)) for e in acc.Scalars('loss')] == [(10, 0.1), (20, 0.05)]
