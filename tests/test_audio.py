"""Audio front end (attnlab/data/audio.py) against its definitions computed
another way: WAV samples written by hand, the DFT as a sum, each mel
triangle from its three corner frequencies."""
import io
import math
import wave

import numpy as np
import pytest

from attnlab.data import audio


def wav_bytes(channels, rate, width, frames):
  """frames [N, channels] of raw integer samples -> a WAV file's bytes."""
  buf = io.BytesIO()
  with wave.open(buf, "wb") as w:
    w.setnchannels(channels)
    w.setsampwidth(width)
    w.setframerate(rate)
    w.writeframes(np.asarray(frames, {1: np.uint8, 2: "<i2", 4: "<i4"}[width]).tobytes())
  return buf.getvalue()


def test_read_wav_averages_channels_and_scales_by_sample_width():
  left = np.array([0, 16384, -16384, 32767], np.int64)
  right = np.array([32767, 0, -32767, 32767], np.int64)
  x, rate, channels = audio.read_wav(wav_bytes(2, 16000, 2, np.stack([left, right], 1)))
  assert (rate, channels) == (16000, 2)
  np.testing.assert_allclose(x, (left + right) / 2 / 32767, atol=1e-6)
  # 8-bit WAV is unsigned around 128.
  x, rate, channels = audio.read_wav(wav_bytes(1, 8000, 1, [[128], [255], [0]]))
  np.testing.assert_allclose(x, [0.0, 127 / 128, -1.0])
  assert (rate, channels) == (8000, 1)


def test_resampling_keeps_a_tone_below_the_new_nyquist_and_drops_one_above():
  t = np.arange(22050) / 22050
  low = audio.resample(np.sin(2 * math.pi * 300 * t), 22050, 8000)
  assert low.shape == (8000,)
  # Output sample j sits at input position (j + 0.5) * 22050 / 8000 - 0.5.
  times = ((np.arange(8000) + 0.5) * 22050 / 8000 - 0.5) / 22050
  np.testing.assert_allclose(low[100:-100], np.sin(2 * math.pi * 300 * times)[100:-100],
                             atol=0.05)
  # 6 kHz is above 8 kHz's Nyquist: taking every 2.76th sample would fold
  # it to 2 kHz at full strength; low-passed first, little is left.
  high = audio.resample(np.sin(2 * math.pi * 6000 * t), 22050, 8000)
  naive = np.sin(2 * math.pi * 6000 * np.arange(8000) / 8000)
  assert np.sqrt(np.mean(high[100:-100] ** 2)) < 0.25 * np.sqrt(np.mean(naive ** 2))
  np.testing.assert_array_equal(audio.resample(t, 8000, 8000), t.astype(np.float32))


def naive_log_mel(x, rate, num_mels, window, hop, n_fft):
  """The same features from their definitions: each frame's DFT as a sum of
  windowed samples times e^(-2 pi i k n / N), each filter a triangle
  between the mel-spaced corners left-centre-right, evaluated bin by bin."""
  frames = max(1, math.ceil((len(x) - window) / hop) + 1)
  x = np.concatenate([x, np.zeros((frames - 1) * hop + window - len(x))])
  hann = [0.5 - 0.5 * math.cos(2 * math.pi * n / (window - 1)) for n in range(window)]
  mel = lambda f: 2595 * math.log10(1 + f / 700)
  hz = lambda m: 700 * (10 ** (m / 2595) - 1)
  corners = [hz(mel(rate / 2) * j / (num_mels + 1)) for j in range(num_mels + 2)]
  out = np.zeros((frames, num_mels))
  n = np.arange(window)
  for t in range(frames):
    seg = x[t * hop:t * hop + window] * hann
    for i in range(num_mels):
      left, centre, right = corners[i], corners[i + 1], corners[i + 2]
      energy = 0.0
      for k in range(n_fft // 2 + 1):
        f = k * rate / n_fft
        if left < f <= centre:
          weight = (f - left) / (centre - left)
        elif centre < f < right:
          weight = (right - f) / (right - centre)
        else:
          continue
        coefficient = np.sum(seg * np.exp(-2j * math.pi * k * n / n_fft))
        energy += weight * abs(coefficient) ** 2
      out[t, i] = math.log(max(energy, 1e-10))
  return out


@pytest.mark.parametrize("rate,length", [(8000, 1000), (16000, 880)])
def test_log_mel_equals_its_definition(rate, length):
  x = np.random.default_rng(0).normal(size=length).astype(np.float32) * 0.1
  ours = audio.log_mel(x, rate, num_mels=8)
  window, hop = rate // 40, rate // 100
  want = naive_log_mel(x.astype(np.float64), rate, 8, window, hop, 1 << (window - 1).bit_length())
  assert ours.shape == want.shape
  np.testing.assert_allclose(ours, want, rtol=1e-4, atol=1e-4)


def test_a_tone_lights_the_filter_centred_nearest_it():
  rate = 8000
  t = np.arange(rate // 2) / rate
  features = audio.log_mel(np.sin(2 * math.pi * 1000 * t), rate, num_mels=40)
  centres = audio.mel_to_hz(np.linspace(0, audio.hz_to_mel(rate / 2), 42))[1:-1]
  assert features.shape == (49, 40)
  assert set(features.argmax(1)) == {int(np.abs(centres - 1000).argmin())}
  # A signal shorter than one window is one zero-padded frame.
  assert audio.log_mel(np.ones(10), rate).shape == (1, 40)


def test_recorded_prompts_builder_keeps_transcribed_speech_at_8_khz(tmp_path, monkeypatch):
  """The asterisk_prompts builder on fixture .debs (the real ones come from
  apt): comments, sound descriptions and files without a transcript are
  left out, a 16 kHz stereo file is stored mono at 8 kHz, splits follow the
  names' hash."""
  import gzip
  import tensorflow_datasets as tfds
  from attnlab.data import asterisk
  from helpers import deb
  transcripts = ("; Core Asterisk Sounds in English\n\n"
                 "digits/7: seven\nhello: Hello,   world.\nbeep: [a simple beep tone]\n"
                 "missing: No file for this one.\n" +
                 "".join(f"p{i}: Prompt number {i}.\n" for i in range(30)))
  tone = lambda n: (np.sin(np.arange(n) / 5) * 10000).astype(np.int64)
  folder = asterisk.WAV["folder"]
  files = {f"{folder}/digits/7.wav": wav_bytes(1, 8000, 2, tone(800)[:, None]),
           f"{folder}/hello.wav": wav_bytes(2, 16000, 2, np.stack([tone(1600)] * 2, 1)),
           f"{folder}/beep.wav": wav_bytes(1, 8000, 2, tone(80)[:, None]),
           f"{folder}/unlisted.wav": wav_bytes(1, 8000, 2, tone(80)[:, None]),
           **{f"{folder}/p{i}.wav": wav_bytes(1, 8000, 2, tone(100 + i)[:, None])
              for i in range(30)}}
  debs = {asterisk.WAV["name"]: deb(tmp_path / "wav.deb", files),
          asterisk.TRANSCRIPTS["name"]: deb(tmp_path / "text.deb", {
              asterisk.TRANSCRIPTS["member"]: gzip.compress(transcripts.encode())})}
  monkeypatch.setattr(asterisk.fetch, "apt_deb", lambda name, version, sha, dest: debs[name])
  asterisk.AsteriskPrompts(data_dir=str(tmp_path / "tfds"),
                           file_format="array_record").download_and_prepare()
  rows = {}
  for split in ("train", "validation", "test"):
    ds = tfds.data_source("asterisk_prompts", split=split, data_dir=str(tmp_path / "tfds"))
    for i in range(len(ds)):
      rows[ds[i]["name"].decode()] = (split, ds[i])
  assert set(rows) == {"digits/7", "hello", *(f"p{i}" for i in range(30))}
  assert all(split == asterisk.split_of(name) for name, (split, _) in rows.items())
  assert {split for split, _ in rows.values()} == {"train", "validation", "test"}
  assert rows["hello"][1]["text"] == b"Hello, world."
  np.testing.assert_array_equal(rows["digits/7"][1]["audio"], tone(800))
  hello = rows["hello"][1]["audio"]
  assert hello.dtype == np.int16 and hello.shape == (800,)
  # Sample j of the 8 kHz copy sits at 16 kHz position 2 j + 0.5.
  np.testing.assert_allclose(hello[50:-50], 10000 * np.sin((2 * np.arange(800) + 0.5) / 5)[50:-50],
                             atol=400)
