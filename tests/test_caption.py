"""Show, Attend and Tell (attnlab/models/show_attend_tell.py,
experiments/caption.py): the decoder against its formulas and against
itself step by step, the hard-attention gradient estimator against the
exact gradient, BLEU against a by-hand count, and runs from the command
line on a captions folder."""
import collections
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab import decode
from attnlab.data import pairs
from attnlab.data import tokenizer as tok_lib
from attnlab.evals import bleu
from attnlab.models import show_attend_tell as sat
from attnlab.models import vit
from attnlab.nn import hard
from helpers import assert_trees_equal, load_state, make_folder, make_pairs_folder, run_cli

V, B, T = 11, 3, 5


def model(attention="soft", expected_prob=0.5):
  backbone = vit.ViT(num_classes=0, width=16, depth=1, mlp_dim=32, num_heads=2, patch=4,
                     image_size=16)
  return sat.ShowAttendTell(V, backbone, embed=8, hidden=12, attention_dim=10,
                            attention=attention, expected_prob=expected_prob)


@pytest.fixture(scope="module")
def setup():
  images = jax.random.normal(jax.random.PRNGKey(0), (B, 16, 16, 3))
  tokens = jax.random.randint(jax.random.PRNGKey(1), (B, T), 0, V)
  params = jax.jit(model().init)(jax.random.PRNGKey(2), images, tokens)
  return images, tokens, params


def test_attention_is_over_the_patch_grid_and_sums_to_one(setup):
  images, tokens, params = setup
  logits, aux = jax.jit(model().apply)(params, images, tokens)
  assert logits.shape == (B, T, V)
  assert aux["attention"].shape == (B, T, 16)  # 4 x 4 patches, no class token
  np.testing.assert_allclose(aux["attention"].sum(-1), 1.0, rtol=1e-6)
  assert np.all(aux["attention"] > 0)


def test_doubly_stochastic_penalty_is_its_formula():
  w = jax.random.dirichlet(jax.random.PRNGKey(0), jnp.ones(7), (2, 4))  # [B, T, L]
  mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool)
  want = np.mean([sum((1 - sum(float(w[b, t, i]) for t in range(4) if mask[b, t])) ** 2
                      for i in range(7)) for b in range(2)])
  np.testing.assert_allclose(sat.doubly_stochastic_penalty(w, jnp.asarray(mask)), want,
                             rtol=1e-5)


def test_step_by_step_decoding_equals_teacher_forcing(setup):
  images, tokens, params = setup
  m = model()
  want, aux = m.apply(params, images, tokens)

  def by_steps(params):
    memory = m.apply(params, images, method=m.encode)
    state = m.apply(params, memory, method=m.initial_state)
    logits, weights = [], []
    for t in range(T):
      state, step_logits, w, _ = m.apply(params, memory, state, tokens[:, t],
                                         method=m.decode_step)
      logits.append(step_logits)
      weights.append(w)
    return jnp.stack(logits, 1), jnp.stack(weights, 1)
  got, got_weights = jax.jit(by_steps)(params)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got_weights, aux["attention"], rtol=1e-5, atol=1e-7)


def test_hard_attention_samples_a_location_or_takes_the_expectation(setup):
  """expected_prob 1: always the expectation, so the soft model's logits
  and no score; 0: always a sampled location, log p(s) = log alpha_s < 0,
  and other logits than soft attention's."""
  images, tokens, params = setup
  soft, _ = model().apply(params, images, tokens)
  rng = jax.random.PRNGKey(3)
  always_expected, aux = model("hard", 1.0).apply(params, images, tokens, rng=rng)
  np.testing.assert_allclose(always_expected, soft, rtol=1e-6)
  np.testing.assert_array_equal(aux["log_prob"], 0.0)
  sampled, aux = model("hard", 0.0).apply(params, images, tokens, rng=rng)
  assert np.all(aux["log_prob"] < 0)
  # Each log p(s_t) is the log of one of that step's attention weights.
  logw = np.log(np.asarray(aux["attention"]))
  assert np.all(np.min(np.abs(logw - np.asarray(aux["log_prob"])[..., None]), -1) < 1e-5)
  assert not np.allclose(sampled, soft)
  # Without an rng (decoding), hard attention decodes with the expectation.
  np.testing.assert_allclose(model("hard").apply(params, images, tokens)[0], soft, rtol=1e-6)


def beam(m, params, images, beam_size, max_len):
  memory = m.apply(params, images, method=m.encode)
  state = {"memory": memory, "dec": m.apply(params, memory, method=m.initial_state)}

  def step(state, token):
    dec, logits, w, _ = m.apply(params, state["memory"], state["dec"], token,
                                method=m.decode_step)
    return {"memory": state["memory"], "dec": dec}, logits, w
  return decode.beam_search(step, state, BOS, EOS, beam=beam_size, max_len=max_len)


BOS, EOS = 2, 1


def test_beam_search_is_exhaustive_search_when_it_keeps_every_prefix(setup):
  """Beam V over captions of at most 2 words keeps every first word, so it
  must return the best of all 1 + V captions (scored by teacher forcing,
  log p / GNMT's length penalty 0.6)."""
  images, _, params = setup
  m = model()
  seqs, scores, _ = beam(m, params, images, V, 2)
  every = [(EOS,)] + [(w, EOS) for w in range(V) if w != EOS]
  for b in range(B):
    best = max(every, key=lambda seq: float(teacher_forced_logp(m, params, images[b:b + 1], seq)
                                            / decode.length_penalty(len(seq), 0.6)))
    got = tuple(int(t) for t in seqs[b, 0] if t)
    assert got == tuple(t for t in best if t), (b, got, best)
    want = teacher_forced_logp(m, params, images[b:b + 1], best) / decode.length_penalty(
        len(best), 0.6)
    np.testing.assert_allclose(scores[b, 0], want, rtol=1e-5)


def teacher_forced_logp(m, params, image, seq):
  tokens_in = jnp.asarray([[BOS, *seq[:-1]]])
  logits, _ = m.apply(params, image, tokens_in)
  logp = jax.nn.log_softmax(logits[0])
  return sum(logp[t, w] for t, w in enumerate(seq))


def test_beam_returns_the_per_word_attention_of_its_best_caption(setup):
  images, _, params = setup
  m = model()
  seqs, _, weights = beam(m, params, images, 3, 6)
  best = seqs[:, 0]
  _, aux = m.apply(params, images, jnp.concatenate([jnp.full((B, 1), BOS), best[:, :-1]], 1))
  for b in range(B):
    n = int((best[b] > 0).sum())
    np.testing.assert_allclose(weights[b, 0, :n], aux["attention"][b, :n], rtol=1e-5,
                               atol=1e-6)


# --- hard attention's gradient (Xu et al. eq. 12) -----------------------------------

def test_hard_attention_gradient_estimator_is_unbiased_on_a_toy_problem():
  """Locations s ~ alpha = softmax(theta) with rewards r_s: the exact
  gradient of E[r_s] is alpha * (r - alpha . r). The estimator (samples of
  hard.hard_attention through hard.reinforce_surrogate) over 400k samples is
  within 5 standard errors of it, for a zero baseline and for b = E[r]
  (which has the smaller variance); the entropy term's gradient is
  d H / d theta = -alpha * (log alpha + H)."""
  n = 400_000
  theta = jnp.array([0.3, -1.0, 0.8, 0.0, -0.4, 1.2])
  r = jnp.array([1.0, -2.0, 0.5, 3.0, 0.0, -1.0])
  alpha = np.asarray(jax.nn.softmax(theta), np.float64)
  rr = np.asarray(r, np.float64)
  exact = alpha * (rr - alpha @ rr)

  def objective(theta, baseline, entropy_weight=0.0, reward=True):
    w = jnp.broadcast_to(jax.nn.softmax(theta), (n, 1, theta.shape[0]))
    _, index, log_prob = hard.hard_attention(jax.random.PRNGKey(0), w,
                                            jnp.zeros((n, theta.shape[0], 1)))
    rewards = r[index[:, 0]] if reward else jnp.zeros(n)
    loss, _ = hard.reinforce_surrogate(log_prob, rewards, baseline, w, entropy_weight)
    return -loss  # the surrogate is minimised: its negative is the objective
  grad = jax.jit(jax.grad(objective), static_argnums=(2, 3))
  variances = []
  for b in (0.0, float(alpha @ rr)):
    # Per-sample estimate g_k = (r_s - b)(1[s = k] - alpha_k): its exact variance.
    onehot = np.eye(len(alpha))
    second = sum(alpha[s] * (rr[s] - b) ** 2 * (onehot[s] - alpha) ** 2 for s in range(len(alpha)))
    variance = second - exact ** 2
    variances.append(variance.sum())
    got = np.asarray(grad(theta, b))
    assert np.all(np.abs(got - exact) < 5 * np.sqrt(variance / n)), (b, got, exact)
  assert variances[1] < variances[0]  # the baseline reduces the variance
  entropy = -np.sum(alpha * np.log(alpha))
  np.testing.assert_allclose(grad(theta, 0.0, 1.0, False), -alpha * (np.log(alpha) + entropy),
                             rtol=1e-4, atol=1e-6)


def test_reinforce_baseline_is_a_moving_average_of_the_reward():
  _, b = hard.reinforce_surrogate(jnp.zeros((4, 2)), jnp.array([1.0, 2.0, 3.0, 6.0]),
                                 jnp.float32(10.0), jnp.full((4, 2, 3), 1 / 3), 0.0, 0.9)
  np.testing.assert_allclose(b, 0.9 * 10 + 0.1 * 3.0, rtol=1e-6)


# --- words and BLEU ---------------------------------------------------------------

def test_word_vocabulary_keeps_frequent_words_and_reads_others_as_unknown():
  texts = ["man juggling: act, balance", "man dancing", "woman dancing", "t-shirt"]
  words = tok_lib.Words.from_texts(texts, vocab_size=8, min_count=1)
  # 4 reserved ids, then the 4 most frequent words (ties alphabetical).
  assert words.words[4:] == ["dancing", "man", ",", ":"]
  words = tok_lib.Words.from_texts(texts, vocab_size=100, min_count=1)
  ids = words.encode("man juggling: a t-shirt, act")
  assert ids.count(tok_lib.UNK) == 1 and "t-shirt" in words.pieces(ids)
  assert words.decode(ids + [tok_lib.EOS, 5]) == "man juggling: <unk> t-shirt, act"
  assert words.unknown_chars("a man") == ["a"]
  assert tok_lib.Words.from_texts(texts, 100, min_count=2).words[4:] == ["dancing", "man"]


def naive_bleu(hypotheses, references, order):
  """BLEU-n (Papineni et al. 2002) by hand: clipped n-gram counts against
  the most of any reference, the closest reference length (the shorter on
  ties), no smoothing."""
  correct, total, hyp_len, ref_len = [0] * order, [0] * order, 0, 0
  for h, refs in zip(hypotheses, references):
    h, refs = h.split(), [r.split() for r in refs]
    hyp_len += len(h)
    ref_len += min((abs(len(r) - len(h)), len(r)) for r in refs)[1]
    for n in range(1, order + 1):
      grams = lambda words: collections.Counter(tuple(words[i:i + n])
                                                for i in range(len(words) - n + 1))
      most = collections.Counter()
      for r in refs:
        most |= grams(r)
      correct[n - 1] += sum(min(c, most[g]) for g, c in grams(h).items())
      total[n - 1] += max(len(h) - n + 1, 0)
  if min(correct) == 0:
    return 0.0
  bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
  return 100 * bp * math.exp(sum(math.log(c / t) for c, t in zip(correct, total)) / order)


def test_caption_bleu_with_several_references_each_is_the_by_hand_count():
  hyps = ["a red square on white", "a blue circle", "green square", "a small yellow star"]
  refs = [["a red square", "red square on a white ground", "red"],
          ["a blue circle"], ["a green square", "green"],
          ["yellow star", "a yellow star", "small yellow star in the corner", "star"]]
  for n in (1, 2, 3, 4):
    got, signature = bleu.corpus_bleu(hyps, refs, n, "none")
    np.testing.assert_allclose(got, naive_bleu(hyps, refs, n), rtol=1e-9)
  assert "nrefs:var" in signature and "smooth:none" in signature


# --- held-out pairs ------------------------------------------------------------------

def test_shared_with_training_counts_held_out_images_or_names_seen_in_training(tmp_path):
  root = make_pairs_folder(tmp_path / "pairs", (("train", 2), ("validation", 1), ("test", 1)))
  data = type("D", (), {"source": "folder", "folder": root})
  train, test = (pairs.source(data, s) for s in ("train", "test"))
  # The folder's test images are new squares, but each colour's name
  # ("a red square") is a training caption too.
  assert pairs.shared_with_training(train, test) == len(test)
  rows = [{"image": b"new", "captions": ["a purple hexagon"]},
          {"image": train[0]["image"], "captions": ["another name"]}]
  assert pairs.shared_with_training(train, rows) == 1  # the copied image


# --- from the command line --------------------------------------------------------------

def test_captioning_a_folder_of_pairs_trains_reports_bleu_and_captions_your_images(tmp_path):
  """Hard attention on a captions folder: BLEU-1..4 on validation during
  training and on test at the end, samples, caption grids and per-word
  attention overlays; then `caption WORKDIR IMAGE` prints a caption and
  writes its overlay; a file that is no image is one line, exit 2."""
  root = make_pairs_folder(tmp_path / "pairs")
  run = tmp_path / "run"
  rc, out = run_cli("train", "--config", "configs/caption.py:folder,runlocal=True,attention=hard",
                    "--workdir", str(run), f"--config.data.folder={root}")
  assert rc == 0, out
  assert "eval at step 4: eval/loss" in out and "eval/bleu4" in out, out
  assert "0 of them sharing the image or name" not in out  # the folder's names repeat
  test = json.loads((run / "test.json").read_text())
  assert {"test/bleu1", "test/bleu4", "test/loss", "test/shared_with_training"} <= set(test)
  assert "smooth:none" in (run / "samples" / "test_step4.txt").read_text()
  plots = os.listdir(run / "plots")
  assert "captions_validation_step4.png" in plots and "captions_test_step4.png" in plots
  assert sum(p.startswith("caption_test_") for p in plots) == 4  # 4 test images
  assert (run / "words.json").exists()
  state = load_state(run)
  assert np.isfinite(state["extra"]["baseline"]) and state["extra"]["baseline"] != 0
  image = os.path.join(root, "test", "red_0.png")
  rc, out = run_cli("caption", str(run), image)
  assert rc == 0, out
  assert f"{image}: " in out and (run / "plots" / "caption_red_0.png").exists(), out
  bad = tmp_path / "notes.png"
  bad.write_text("not an image")
  rc, out = run_cli("caption", str(run), str(bad))
  assert rc == 2 and "is not a readable image" in out and "Traceback" not in out, out


def test_an_encoder_from_a_classification_run_is_taken_and_stays_frozen(tmp_path):
  """--config.init_from=RUN with frozen=True: the captioner's encoder is
  the classification run's (its head left out) before and after training;
  the decoder trains (on SentencePiece tokens, kept in the run)."""
  images = make_folder(tmp_path / "images")
  rc, out = run_cli("train", "--config", "configs/vit.py:folder,runlocal=True",
                    "--workdir", str(tmp_path / "vit"), f"--config.data.folder={images}")
  assert rc == 0, out
  root = make_pairs_folder(tmp_path / "pairs")
  rc, out = run_cli("train", "--config",
                    "configs/caption.py:folder,runlocal=True,frozen=True,tokens=sentencepiece",
                    "--workdir", str(tmp_path / "run"), f"--config.data.folder={root}",
                    f"--config.init_from={tmp_path / 'vit'}")
  assert rc == 0, out
  assert f"parameters from {tmp_path / 'vit'}" in out, out
  pretrained = load_state(tmp_path / "vit")["params"]
  trained = load_state(tmp_path / "run")["params"]
  assert_trees_equal({k: v for k, v in pretrained.items() if k != "head"},
                     trained["backbone"])
  assert (tmp_path / "run" / "tokenizer.model").exists()
  first = load_state(tmp_path / "run", step=2)["params"]
  assert not np.allclose(first["lstm"]["hi"]["kernel"], trained["lstm"]["hi"]["kernel"])


def test_a_resnet_encoder_with_batchnorm_trains_its_statistics(tmp_path):
  """A ResNet-18 (small inputs: a 4 x 4 grid of 32 x 32 images) as the
  encoder: its BatchNorm statistics are the run's model state, updated
  from the training batches (running means leave their initial 0)."""
  root = make_pairs_folder(tmp_path / "pairs")
  rc, out = run_cli("train", "--config", "configs/caption.py:folder,runlocal=True",
                    "--workdir", str(tmp_path / "run"), f"--config.data.folder={root}",
                    "--config.model.name=resnet", "--config.model.variant=18",
                    "--config.model.small_inputs=True", "--config.model.width=8")
  assert rc == 0, out
  assert "eval/uniform_entropy 2.7726" in out, out  # log 16 locations
  stats = load_state(tmp_path / "run")["model_state"]["batch_stats"]["backbone"]
  means = [np.abs(v["mean"]).max() for v in jax.tree.leaves(
      stats, is_leaf=lambda x: isinstance(x, dict) and "mean" in x)]
  assert len(means) > 10 and min(means) > 0, means


@pytest.mark.parametrize("case", ["missing image", "empty caption", "not a grid",
                                  "one-pixel map", "image size"])
def test_bad_caption_input_is_one_line_exit_2_before_compile(tmp_path, case):
  root = make_pairs_folder(tmp_path / "pairs")
  extra = []
  if case == "missing image":
    with open(os.path.join(root, "train", "captions.tsv"), "a") as f:
      f.write("gone.png\tx\n")
    message = "names gone.png, which is not in"
  elif case == "empty caption":
    with open(os.path.join(root, "validation", "captions.tsv"), "a") as f:
      f.write("red_0.png\t  \n")
    message = "has an empty caption for red_0.png"
  elif case == "not a grid":  # patches as large as the image: one token
    extra, message = ["--config.model.variant=Ti/32"], "into 1 location, not a grid"
  elif case == "one-pixel map":  # ResNet-18's stride 32 leaves 1 x 1 of 32 x 32
    extra = ["--config.model.name=resnet", "--config.model.variant=18"]
    message = "resnet 18 encoder turns 32 x 32 images into 1 location"
  else:
    extra, message = ["--config.model.image_size=30"], "30 is not divisible by the patch size 4"
  rc, out = run_cli("train", "--config", "configs/caption.py:folder,runlocal=True",
                    "--workdir", str(tmp_path / "run"), f"--config.data.folder={root}", *extra)
  assert rc == 2 and message in out and "Traceback" not in out, out
  assert len([line for line in out.splitlines() if line.startswith("error")]) == 1, out
  assert "compiled" not in out


def test_distinct_bleu_counts_each_set_of_captions_once():
  """Five skin tones of one emoji (the same captions) weigh as one image in
  distinct_bleuN: its first image's caption, with the other images'."""
  from experiments import caption
  refs = [["kiss", "kiss: love, heart"]] * 5 + [["red apple"], ["green apple"]]
  hyps = ["kiss: love, heart"] * 4 + ["a kiss", "red apple", "apple"]
  scores, _ = caption.bleu_scores(hyps, refs)
  for n in (1, 2, 3, 4):
    assert scores[f"bleu{n}"] == bleu.corpus_bleu(hyps, refs, n, "none")[0]
    want = bleu.corpus_bleu([hyps[0], hyps[5], hyps[6]], [refs[0], refs[5], refs[6]], n, "none")
    assert scores[f"distinct_bleu{n}"] == want[0]
  assert scores["distinct_images"] == 3 and scores["distinct_bleu1"] != scores["bleu1"]
