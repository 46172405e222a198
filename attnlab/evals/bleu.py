"""BLEU with sacreBLEU (Post 2018): cased, on detokenised text, signature
reported with every score so numbers can be compared across papers."""
import numpy as np
from sacrebleu.metrics import BLEU


def corpus_bleu(hypotheses, references):
  """(score, signature) for lists of strings (one reference each)."""
  metric = BLEU()
  score = metric.corpus_score(list(hypotheses), [list(references)])
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
