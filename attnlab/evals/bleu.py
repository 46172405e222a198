"""BLEU with sacreBLEU (Post 2018): cased, on detokenised text, signature
reported with every score so numbers can be compared across papers."""
import numpy as np
from sacrebleu.metrics import BLEU


def corpus_bleu(hypotheses, references, max_ngram_order=4, smooth_method="exp"):
  """(score, signature) for a list of hypotheses and, per hypothesis, one
  reference string or a list of any number of them (captions: every
  caption of an image is a reference). max_ngram_order n gives BLEU-n, the
  geometric mean of the 1..n-gram precisions (the captioning papers'
  BLEU-1..4). smooth_method "none": a missing n-gram order scores 0, as
  the captioning papers' coco-caption scorer (sacreBLEU's default is "exp")."""
  refs = [[r] if isinstance(r, str) else list(r) for r in references]
  # sacreBLEU takes reference streams; an image with fewer captions than
  # the most has None in the others.
  streams = [[r[j] if j < len(r) else None for r in refs]
             for j in range(max((len(r) for r in refs), default=1))]
  metric = BLEU(max_ngram_order=max_ngram_order, smooth_method=smooth_method)
  score = metric.corpus_score(list(hypotheses), streams)
  return score.score, str(metric.get_signature())


def bleu_by_length(hypotheses, references, source_lengths, edges):
  """BLEU per source-length bucket [edges[i], edges[i+1]) in words (Bahdanau
  et al. 2015, Figure 2). Returns [(lo, hi, n, bleu)]."""
  lengths = np.asarray(source_lengths)
  rows = []
  for lo, hi in zip(edges[:-1], edges[1:]):
    idx = np.nonzero((lengths >= lo) & (lengths < hi))[0]
    if len(idx):
      score, _ = corpus_bleu([hypotheses[i] for i in idx],
                             [references[i] for i in idx])
      rows.append((lo, hi, len(idx), score))
  return rows
