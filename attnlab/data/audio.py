"""Audio for speech recognition: WAV files of any rate and channel count
read as mono float32 at the rate a model wants, and log-mel filterbank
features, computed once in the input pipeline.

  read_wav(data)                  -> (samples [N] float32 in [-1, 1], rate, channels)
  resample(samples, rate, to)     -> samples at `to` Hz (jax.image.resize,
                                     antialiased when it lowers the rate)
  log_mel(samples, rate, ...)     -> [frames, num_mels] float32

The features are the usual ASR front end (Chorowski et al. 2015 use 40
filterbanks; so do most LAS / Transformer recipes with 80): frames of
`window_ms` every `hop_ms`, a Hann window, the power spectrum, triangular
filters equally spaced on the mel scale m = 2595 log10(1 + f / 700) (HTK's),
and the log of each filter's energy.
"""
import io
import wave

import jax
import numpy as np


def read_wav(data):
  """`data` (bytes or a path) of a PCM WAV file -> (mono samples float32 in
  [-1, 1], sample rate, channels in the file). Channels are averaged."""
  source = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
  with wave.open(source, "rb") as w:
    rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
    raw = w.readframes(w.getnframes())
  if width == 1:  # 8-bit WAV is unsigned
    x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128) / 128
  elif width in (2, 4):
    dtype = np.int16 if width == 2 else np.int32
    x = np.frombuffer(raw, dtype).astype(np.float32) / np.iinfo(dtype).max
  else:
    raise ValueError(f"{width * 8}-bit samples: convert the file to 16-bit PCM WAV")
  return x.reshape(-1, channels).mean(1), rate, channels


def resample(samples, rate, to):
  """`samples` at `rate` Hz -> at `to` Hz. Lowering the rate low-passes
  first (jax.image.resize's antialiasing), so nothing above the new
  Nyquist frequency folds back into the band."""
  if rate == to:
    return np.asarray(samples, np.float32)
  n = int(round(len(samples) * to / rate))
  return np.asarray(jax.image.resize(np.asarray(samples, np.float32), (n,), "linear",
                                     antialias=True))


def hz_to_mel(f):
  return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)


def mel_to_hz(m):
  return 700.0 * (10.0 ** (np.asarray(m, np.float64) / 2595.0) - 1.0)


def mel_filterbank(num_mels, fft_size, rate, low_hz=0.0, high_hz=None):
  """[fft_size // 2 + 1, num_mels] weights: filter i rises linearly from
  the centre of filter i - 1 to its own centre and falls to the centre of
  filter i + 1, the centres equally spaced in mel between low_hz and
  high_hz (default: the Nyquist frequency)."""
  high_hz = rate / 2 if high_hz is None else high_hz
  edges = mel_to_hz(np.linspace(hz_to_mel(low_hz), hz_to_mel(high_hz), num_mels + 2))
  bins = np.linspace(0, rate / 2, fft_size // 2 + 1)[:, None]
  lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
  rising = (bins - lower) / (centre - lower)
  falling = (upper - bins) / (upper - centre)
  return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


def log_mel(samples, rate, num_mels=40, window_ms=25.0, hop_ms=10.0, floor=1e-10):
  """[frames, num_mels] log filterbank energies of mono `samples`. A frame
  starts every hop; the last frames are zero-padded to a whole window
  (at least one frame for any non-empty signal)."""
  window = int(round(rate * window_ms / 1000))
  hop = int(round(rate * hop_ms / 1000))
  fft_size = 1 << (window - 1).bit_length()
  x = np.asarray(samples, np.float32)
  frames = 1 + max(0, -(-(len(x) - window) // hop))  # ceil((n - window) / hop) + 1
  x = np.pad(x, (0, (frames - 1) * hop + window - len(x)))
  index = np.arange(window)[None] + hop * np.arange(frames)[:, None]
  spectrum = np.fft.rfft(x[index] * np.hanning(window).astype(np.float32), fft_size)
  power = (spectrum.real ** 2 + spectrum.imag ** 2).astype(np.float32)
  return np.log(np.maximum(power @ mel_filterbank(num_mels, fft_size, rate), floor))
