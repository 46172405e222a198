"""Open Clip Art Library drawings as a tensorflow-datasets builder: `openclipart`.

Sources (Debian, fetched with `apt-get download`, never installed):
openclipart-png and openclipart-svg 1:0.18+dfsg-19, public domain. The PNG
package holds the drawings, the SVG package the same drawings with their
metadata: the title (dc:title) and keywords (dc:subject) their authors gave.

Of the 22 top-level folders, six are left out: shapes/ (1,645 machine-made
stars and polygons), computer/ (2,158 interface icons of a few themes),
special/ (gradients and fill patterns), buttons/ and logos/ (10 drawings)
and unsorted/; so are two stop signs exported at 21k x 30k pixels (2.5 GB
each to decode; MAX_PIXELS). The package files some drawings in several
folders (589 of the 3,929 kept files are copies); each is kept once. That
leaves 3,338 drawings in 16 categories (the folder: animals, food,
people, ...; usable as zero-shot classes): 2,604 train, 403 validation,
331 test.

Titles are noisy: some are a collection's name shared by hundreds of
drawings ("AIGA_Symbol_Signs", "card", "SVG Road Signs"). A drawing's
`name` is its title when at most MAX_SHARED drawings share it, otherwise
the words of its file name without the author's name and numbering
("aiga_baggage_check_in1" -> "aiga baggage check in"); `keywords` are its
tags without the author's name and empty or folder-bookkeeping tags.

Each drawing is stored as a 64 x 64 RGBA PNG, padded to a square with
transparency. Splits by drawing family (the path without trailing
numbering, crc32: 80% train, 10% validation, 10% test), so numbered
variants of one drawing share a split.
"""
import collections
import hashlib
import io
import re
import warnings
import zlib
from xml.etree import ElementTree

import tensorflow_datasets as tfds
from PIL import Image

from attnlab.data import fetch

PACKAGES = {
    "png": ("openclipart-png", "1:0.18+dfsg-19",
            "f07f1545a2970c2cf3fa339bc2405da1a95cf2b1827bfa05bf73eb1c20291c02"),
    "svg": ("openclipart-svg", "1:0.18+dfsg-19",
            "989712d90d57dfa3230049f553bb43b76c30ee4d4b8c5f6e106e33f7db5cbdc5"),
}
ROOT = "usr/share/openclipart"
LEFT_OUT = ("shapes", "computer", "special", "buttons", "logos", "unsorted")
CATEGORIES = ("animals", "buildings", "containers", "decorations", "education",
              "electronics", "food", "geography", "office", "people", "plants",
              "recreation", "science", "signs and symbols", "tools", "transportation")
MAX_SHARED = 5
MAX_PIXELS = 200_000_000
SIZE = 64
# Tags that say where a file was filed, not what it shows.
BOOKKEEPING = {"", "hash", "unsorted", "icon", "icons", "clip art", "clipart"}
_NS = {"dc": "http://purl.org/dc/elements/1.1/",
       "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
       "cc": "http://web.resource.org/cc/"}


def family(path):
  """The drawing's path without trailing numbering: its split key."""
  return re.sub(r"[\d_\-. ]+$", "", path)


def split_of(path):
  bucket = zlib.crc32(family(path).encode()) % 10
  return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


def metadata(svg_bytes):
  """(title, tags, creator) from an SVG's RDF metadata ("" / [] if absent)."""
  try:
    work = ElementTree.fromstring(svg_bytes).find(".//cc:Work", _NS)
  except ElementTree.ParseError:
    work = None
  if work is None:
    return "", [], ""
  title = (work.findtext("dc:title", "", _NS) or "").strip()
  tags = [(li.text or "").strip() for li in work.findall("dc:subject/rdf:Bag/rdf:li", _NS)]
  creator = (work.findtext("dc:creator/cc:Agent/dc:title", "", _NS) or "").strip()
  return title, tags, creator


def _words(text):
  return re.sub(r"[_\-]+", " ", text).split()


def _is_author_word(word, creator_words):
  # file names abbreviate the author ("architetto_frances" for Architetto
  # Francesco Rollandin): a word of 3+ letters that starts an author word
  w = word.lower().strip(".")
  return any(c == w or (len(w) >= 3 and c.startswith(w)) for c in creator_words)


def file_name_words(path, creator):
  """"aiga_baggage_check_in1" -> "aiga baggage check in": the file name's
  words without the author's name and the numbering."""
  creator_words = [c.lower().strip(".") for c in creator.split()]
  stem = path.rsplit("/", 1)[-1]
  words = [w for w in _words(re.sub(r"\d+", " ", stem))
           if not _is_author_word(w, creator_words)]
  return " ".join(words).strip(" .").lower()


def _clean_title(title):
  # "Clipart by Nicu Buculei - smiley111": the part after the author
  title = re.sub(r"(?i)^clipart by [^-]*-\s*", "", title)
  return " ".join(_words(re.sub(r"[\d#]+$", "", title))).strip(" .").lower()


def name_and_keywords(path, title, tags, creator, title_count):
  """The drawing's (name, keywords) as this builder's docstring says."""
  title = _clean_title(title)
  if not title or title_count[title] > MAX_SHARED:
    title = file_name_words(path, creator) or title
  creator_l = creator.lower()
  keywords = []
  for tag in tags:
    tag = " ".join(_words(tag)).lower()
    if (tag in BOOKKEEPING or tag == creator_l or tag == title or tag in keywords
        or re.fullmatch(r"0x[\da-f]+|\d+", tag)):  # ids, not words
      continue
    keywords.append(tag)
  return title, ", ".join(keywords)


def open_png(png_bytes):
  """The PNG, opened but not decoded (its size is known)."""
  with warnings.catch_warnings():
    # some drawings are exported at over 10,000 px a side: PIL's guard
    # against decompression bombs, meant for untrusted files, warns of them
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    Image.MAX_IMAGE_PIXELS, limit = None, Image.MAX_IMAGE_PIXELS
    try:
      return Image.open(io.BytesIO(png_bytes))
    finally:
      Image.MAX_IMAGE_PIXELS = limit


def square_rgba(img, size=SIZE):
  """An image -> size x size RGBA PNG bytes, centred on transparency."""
  img = img.convert("RGBA")
  side = max(img.size)
  canvas = Image.new("RGBA", (side, side), (0, 0, 0, 0))
  canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
  out = io.BytesIO()
  canvas.resize((size, size), Image.LANCZOS).save(out, format="PNG")
  return out.getvalue()


def drawings(svgs):
  """(path, category, name, keywords) of every kept drawing, path relative
  to the png/ and svg/ folders without its extension."""
  rows = []
  for member, svg in sorted(svgs.items()):
    path = member[len(ROOT + "/svg/"):-len(".svg")]
    top = path.split("/", 1)[0]
    if top in LEFT_OUT or not member.endswith(".svg"):
      continue
    rows.append((path, top.replace("_", " "), *metadata(svg)))
  counts = collections.Counter(_clean_title(t) for _, _, t, _, _ in rows)
  return [(path, category, *name_and_keywords(path, title, tags, creator, counts))
          for path, category, title, tags, creator in rows]


def distinct(rows, pngs):
  """The rows with a PNG, each image once: the package files a drawing in
  several folders (as symlinks), and a copy in two splits would put
  training images in the test split. The first path, sorted, keeps it."""
  seen, out = set(), []
  for row in rows:
    png = pngs.get(f"{ROOT}/png/{row[0]}.png")
    if png is None:
      continue  # (every drawing of 0.18 has both; a later version might not)
    digest = hashlib.sha256(png).digest()
    if digest not in seen:
      seen.add(digest)
      out.append(row)
  return out


class Openclipart(tfds.core.GeneratorBasedBuilder):
  """Open Clip Art drawings, 16 categories; names and keywords as captions."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "openclipart-png/-svg 1:0.18+dfsg-19; 6 folders left out; "
                            "split by drawing family (crc32) 80/10/10."}

  def _info(self):
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(SIZE, SIZE, 4)),
            "label": tfds.features.ClassLabel(names=CATEGORIES),
            "name": tfds.features.Text(), "keywords": tfds.features.Text(),
            "path": tfds.features.Text()}),
        supervised_keys=("image", "label"),
        license="public domain (Open Clip Art Library)")

  def _split_generators(self, dl_manager):
    dest = str(dl_manager.download_dir / "apt")
    debs = {kind: fetch.apt_deb(*PACKAGES[kind][:2], PACKAGES[kind][2], dest)
            for kind in PACKAGES}
    pngs = fetch.deb_members(debs["png"], ROOT + "/png")
    rows = distinct(drawings(fetch.deb_members(debs["svg"], ROOT + "/svg")), pngs)
    return {split: self._generate_examples(pngs, [r for r in rows if split_of(r[0]) == split])
            for split in ("train", "validation", "test")}

  def _generate_examples(self, pngs, rows):
    for path, category, name, keywords in rows:
      img = open_png(pngs[f"{ROOT}/png/{path}.png"])
      if img.width * img.height > MAX_PIXELS:
        continue  # two stop signs at 21k x 30k px: 2.5 GB each to decode
      yield path, {"image": square_rgba(img), "label": category, "name": name,
                   "keywords": keywords, "path": path}
