"""Real recorded speech: Asterisk's English prompts as a tfds builder,
`asterisk_prompts`.

Source: Debian's `asterisk-core-sounds-en-wav` 1.6.1-1 (CC-BY-SA-3.0): 568
prompts of a telephone system read by one speaker (Allison Smith), 8 kHz
mono 16-bit WAV, 25.5 minutes; their transcripts come from
`asterisk-core-sounds-en` 1.6.1-1 (`core-sounds-en.txt.gz`, one `name: text`
line per prompt). Both are fetched with `apt-get download` and read from
the .debs without installing them. Prompts whose transcript is a bracketed
description of a sound (`[ascending tones]`) and files without a
transcript are left out.

Splits by a hash of the prompt's name (crc32 mod 10: 0 test, 1 validation,
the rest train), so a prompt keeps its split when prompts are added.
Examples: `audio` (int16 samples at 8 kHz), `text` (the transcript), `name`
(the prompt's path under the sounds folder, e.g. "digits/7").
"""
import gzip
import os
import zlib

import numpy as np
import tensorflow_datasets as tfds

from attnlab.data import audio as audio_lib
from attnlab.data import fetch

WAV = {"name": "asterisk-core-sounds-en-wav", "version": "1.6.1-1",
       "sha256": "2be3ea287d83299d143815fa804f11179a75b7affd4a758b98b55f5afc18a35d",
       "folder": "usr/share/asterisk/sounds/en_US_f_Allison"}
TRANSCRIPTS = {"name": "asterisk-core-sounds-en", "version": "1.6.1-1",
               "sha256": "973e797d28e37fa6ca3c0a9d6fa717e77cf1268ae916bf09fd3503113cdffa50",
               "member": "usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"}
RATE = 8000


def parse_transcripts(text):
  """`name: text` lines -> {name: text}; `;` comments, blank lines and
  bracketed descriptions of sounds (no speech to transcribe) left out."""
  out = {}
  for line in text.splitlines():
    name, colon, words = line.partition(":")
    words = " ".join(words.split())
    if line.startswith(";") or not colon or not words:
      continue
    if words.startswith("[") and words.endswith("]"):
      continue
    out[name.strip()] = words
  return out


def split_of(name):
  bucket = zlib.crc32(name.encode()) % 10
  return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


class AsteriskPrompts(tfds.core.GeneratorBasedBuilder):
  """Asterisk's English prompts: one speaker, 8 kHz, with transcripts."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "asterisk-core-sounds-en(-wav) 1.6.1-1; splits by crc32 of the "
                            "name, 8/1/1; bracketed sound descriptions left out."}

  def _info(self):
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "audio": tfds.features.Tensor(shape=(None,), dtype=np.int16, encoding="zlib"),
            "text": tfds.features.Text(),
            "name": tfds.features.Text()}),
        license="CC-BY-SA-3.0 (recorded by Allison Smith, 2003-2010; Digium, Inc.)")

  def _split_generators(self, dl_manager):
    folder = os.path.join(dl_manager.download_dir, "apt")
    wav_deb = fetch.apt_deb(WAV["name"], WAV["version"], WAV["sha256"], folder)
    text_deb = fetch.apt_deb(TRANSCRIPTS["name"], TRANSCRIPTS["version"],
                             TRANSCRIPTS["sha256"], folder)
    transcripts = parse_transcripts(gzip.decompress(
        fetch.deb_member(text_deb, TRANSCRIPTS["member"])).decode("utf-8"))
    prefix = WAV["folder"] + "/"
    wavs = {path[len(prefix):-len(".wav")]: data
            for path, data in fetch.deb_members(wav_deb, WAV["folder"]).items()
            if path.endswith(".wav")}
    prompts = sorted(set(wavs) & set(transcripts))
    return {split: self._generate_examples(
        [(name, transcripts[name], wavs[name]) for name in prompts if split_of(name) == split])
        for split in ("train", "validation", "test")}

  def _generate_examples(self, prompts):
    for name, text, data in prompts:
      samples, rate, _ = audio_lib.read_wav(data)
      samples = audio_lib.resample(samples, rate, RATE)
      yield name, {"audio": np.round(samples * 32767).astype(np.int16),
                   "text": text, "name": name}
