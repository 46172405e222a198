"""Metrics out of a run: TensorBoard events, `metrics.jsonl`, a progress line.

clu's metric writers import TensorFlow, which attnlab does not depend on
(docs/design.md), so TensorBoard event records are framed by tensorboard's own
TF-free record writer. Both files go through `Appender`, which also works
where files cannot be appended to (gs://, s3://: objects are immutable).
"""
import json
import os
import socket
import time

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from attnlab import storage


class Appender:
  """A file that only grows. Local: appended to in place. On cloud storage
  the whole object is rewritten at each flush from what it held when
  opened plus what was written since (metrics files are small)."""

  def __init__(self, path):
    self.path = storage.path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    if storage.is_remote(path):
      self._file, self._data = None, bytearray(
          self.path.read_bytes() if self.path.exists() else b"")
    else:
      self._file = self.path.open("ab")

  def write(self, data):
    data = data.encode() if isinstance(data, str) else data
    if self._file is None:
      self._data += data
    else:
      self._file.write(data)

  def flush(self):
    if self._file is None:
      self.path.write_bytes(bytes(self._data))
    else:
      self._file.flush()

  def close(self):
    self.flush()
    if self._file is not None:
      self._file.close()


class MetricsWriter:
  """Writes scalars to `metrics.jsonl` and TensorBoard; images to TB only.

  Only process 0 writes (every process computes the same global metrics).
  Files are opened at the first write: a command that writes nothing
  (`sample`) leaves no empty events file behind.
  """

  def __init__(self, workdir, enabled=True):
    self.enabled = enabled
    self.workdir = storage.path(workdir)
    self.path = self.workdir / "metrics.jsonl"
    self._events = self._jsonl_file = None

  @property
  def _tb(self):
    if self._events is None:
      # TensorBoard reads every file whose name holds "tfevents"; one per
      # process start, as TensorFlow's writer names them.
      name = f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.{os.getpid()}"
      self._events = Appender(self.workdir / "tb" / name)
      self._records = RecordWriter(self._events)
      self._records.write(event_pb2.Event(
          wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
    return self._records

  @property
  def _jsonl(self):
    if self._jsonl_file is None:
      self._jsonl_file = Appender(self.path)
    return self._jsonl_file

  def write_scalars(self, step, scalars):
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
    self._jsonl.flush()
    values = [summary_pb2.Summary.Value(tag=k, simple_value=v)
              for k, v in scalars.items()]
    self._add(step, summary_pb2.Summary(value=values))
    self._events.flush()

  def write_png(self, step, tag, png_bytes, height, width):
    if not self.enabled:
      return
    image = summary_pb2.Summary.Image(height=height, width=width, colorspace=4,
                                      encoded_image_string=png_bytes)
    self._add(step, summary_pb2.Summary(
        value=[summary_pb2.Summary.Value(tag=tag, image=image)]))

  def write_figure(self, step, tag, figure, path=None):
    """Saves a matplotlib figure as PNG (to `path` if given) and to TB."""
    png = (storage.save_figure(figure, path) if self.enabled and path
           else storage.png_of(figure))
    width, height = (figure.get_size_inches() * 100).astype(int)
    self.write_png(step, tag, png, int(height), int(width))

  def write_text(self, step, tag, text):
    if not self.enabled:
      return
    from tensorboard.plugins.text import metadata as text_metadata
    from tensorboard.compat.proto import tensor_pb2, tensor_shape_pb2
    tensor = tensor_pb2.TensorProto(
        dtype=7, string_val=[text.encode()],  # 7 = DT_STRING
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)]))
    meta = text_metadata.create_summary_metadata(display_name=tag,
                                                 description="")
    self._add(step, summary_pb2.Summary(value=[summary_pb2.Summary.Value(
        tag=tag, metadata=meta, tensor=tensor)]))

  def _add(self, step, summary):
    self._tb.write(event_pb2.Event(wall_time=time.time(), step=int(step),
                                   summary=summary).SerializeToString())

  def flush(self):
    for f in (self._events, self._jsonl_file):
      if f is not None:
        f.flush()

  def close(self):
    for f in (self._events, self._jsonl_file):
      if f is not None:
        f.close()
    self._events = self._jsonl_file = None


def read_jsonl(path):
  """Rows of a metrics.jsonl; on resume the latest row of a step wins."""
  rows, path = {}, storage.path(path)
  if path.exists():
    for line in path.read_text().splitlines():
      if line.strip():
        row = json.loads(line)
        rows.setdefault(row["step"], {}).update(row)
  return [rows[s] for s in sorted(rows)]


class Progress:
  """`step 120/3000 (4%) loss 2.3100 | 3.10 steps/s | ETA 15m20s`.

  The rate counts from `start()` (after compilation), so the ETA is honest.
  """

  def __init__(self, total_steps):
    self.total = total_steps
    self.t0, self.first = None, 0

  def start(self, step):
    self.t0, self.first = time.time(), step

  def line(self, step, loss):
    """The rate and ETA only once there is a rate (never `nan steps/s`)."""
    out = f"step {step}/{self.total} ({100 * step // self.total}%) loss {loss:.4f}"
    if self.t0 is not None and step > self.first:
      rate = (step - self.first) / (time.time() - self.t0)
      out += f" | {rate:.2f} steps/s | ETA {format_time((self.total - step) / rate)}"
    return out


def format_time(seconds):
  if seconds is None:
    return "?"
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
