"""Paper tables and reports of finished runs, from our code: `./launch.sh tables NAME`.

  complexity  Vaswani et al. (2017) Table 1, per-layer FLOPs of
              self-attention O(n^2 d), recurrent O(n d^2), convolutional
              O(k n d^2) and restricted self-attention O(r n d), measured by
              XLA's cost analysis for growing n and d; exponents fitted.
  params      parameter counts of our modules at the published sizes
              (Transformer base/big, BERT base/large, GPT-2 small..XL) vs the
              papers' numbers, from jax.eval_shape: nothing is allocated.
  vision      parameters (jax.eval_shape) and forward FLOPs at 224 x 224 (XLA's
              cost analysis) of ViT-B/16, L/16, H/14, Swin-T/S/B, ResNet-50
              and its non-local and local-attention versions against the
              published numbers; the attention-memory arithmetic of pixels
              as tokens vs patches, next to XLA's memory analysis of our
              compiled ViT-L/16 forward with its attention weights; and how
              XLA's memory for a forward grows as the image side doubles:
              ViT (quadratic in tokens), Swin (linear), pixels (R^4).
  bleu_by_length WORKDIR...
              Bahdanau et al. (2015) Figure 2, test BLEU against source
              sentence length, for finished translation runs (each run's
              bleu.json, written at the end of training or by `eval`), as a
              table and one plot beside the runs.
  data_efficiency WORKDIR...
              "ViT needs more data than a ResNet": finished classification
              runs on shares of one training set (data.train_split such as
              train[:5%]), test accuracy (read once, at each run's end) per
              model and share, as a table and data_efficiency.png beside
              the runs.
  equal_time WORKDIR...
              finished classification runs of several models given about
              the same training time (steps from `bench steps`): train and
              wall minutes, validation and test accuracy (test read once,
              at each run's end), and equal_time_<data source>.png beside
              the runs.
  features DINO_RUN FEATURES_RUN...
              DINO's "features without labels": a finished DINO run's k-NN
              and linear-probe accuracy of its teacher's features over
              training time (validation; step 0 is the random network),
              against other runs' frozen features measured the same way
              (configs/vit.py:...,probe=True --config.init_from=SUPERVISED),
              each run's test split read once at its end; a table and
              features.png beside the DINO run.
  compare WORKDIR...
              finished char-LM runs, one row each: cell, size, parameters,
              steps, wall minutes, tokens/s, MFU, held-out nats and bits/char.
  curves WORKDIR... [--key K] [--x step|minutes] [--max_step N] [--out PNG]
              one metric of several runs on one plot.
  gradflow WORKDIR...
              how far back gradients reach in trained char-LMs: |d loss_T /
              d state_{T-d}| by distance d, a table and gradflow.png.
"""
import json
import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np

from attnlab.nn import kernels

NS = (128, 256, 512, 1024)
DS = (64, 128, 256, 512)
K, R = 3, 32


def flops(fn, *shapes):
  """FLOPs of fn at these input shapes (or abstract arrays), from XLA's
  HLO cost analysis."""
  args = [s if not isinstance(s, tuple) else jax.ShapeDtypeStruct(s, jnp.float32)
          for s in shapes]
  cost = jax.jit(fn).lower(*args).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


def self_attention(x):
  """softmax(x x^T / sqrt(d)) x for one head, q = k = v = x [1, n, d]."""
  q = x[:, :, None]
  return kernels.dot_product_attention(q, q, q, implementation="naive")


def restricted(x):
  q = x[:, :, None]
  return kernels.dot_product_attention(q, q, q, kernels.Mask(window=R), implementation="banded")


def recurrent(x, w):
  """h_t = tanh(W h_{t-1} + x_t), unrolled so every step is counted (XLA
  counts the body of a scan only once)."""
  h = jnp.zeros(x.shape[-1])
  for t in range(x.shape[1]):
    h = jnp.tanh(w @ h + x[0, t])
  return h


def convolutional(x, w):
  """1-D convolution, kernel K, d -> d channels."""
  return jax.lax.conv_general_dilated(x, w, (1,), "SAME",
                                      dimension_numbers=("NWC", "WIO", "NWC"))


LAYERS = [
    ("self-attention", "O(n^2 d)", (2, 1), lambda n, d: flops(self_attention, (1, n, d))),
    ("recurrent", "O(n d^2)", (1, 2), lambda n, d: flops(recurrent, (1, n, d), (d, d))),
    ("convolutional", "O(k n d^2)", (1, 2), lambda n, d: flops(convolutional, (1, n, d), (K, d, d))),
    (f"self-attention (restricted, r={R})", "O(r n d)", (1, 1),
     lambda n, d: flops(restricted, (1, n, d))),
]


def slope(xs, ys):
  return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def complexity():
  d0, n0 = 256, 512
  print(f"FLOPs per layer from XLA cost analysis; n in {NS} at d={d0}, "
        f"d in {DS} at n={n0}\n")
  print(f"| layer | theory | n exponent (theory) | d exponent (theory) | "
        f"GFLOP at n={n0}, d={d0} |")
  print("| --- | --- | --- | --- | --- |")
  for name, theory, (en, ed), count in LAYERS:
    sn = slope(NS, [count(n, d0) for n in NS])
    sd = slope(DS, [count(n0, d) for d in DS])
    print(f"| {name} | {theory} | {sn:.2f} ({en}) | {sd:.2f} ({ed}) | "
          f"{count(n0, d0) / 1e9:.3f} |")


def train_seconds(rows):
  """Time spent in train steps (evals and compiles excluded), from the
  logged steps/s of each logging window."""
  logged = [(r["step"], r["train/steps_per_sec"]) for r in rows
            if "train/steps_per_sec" in r]
  return sum((step - prev) / sps for (prev, _), (step, sps) in zip(logged, logged[1:]))


def bleu_by_length(*workdirs):
  from attnlab import metrics as metrics_lib
  from attnlab import viz
  if not workdirs:
    sys.exit("error: give the workdirs of finished translation runs")
  runs = {}
  for wd in workdirs:
    path = os.path.join(wd, "bleu.json")
    if not os.path.exists(path):
      sys.exit(f"error: {path} is missing: finish training, or run "
               f"./launch.sh eval {wd}")
    config = json.load(open(os.path.join(wd, "config.json")))
    rows = metrics_lib.read_jsonl(os.path.join(wd, "metrics.jsonl"))
    last = lambda key: [r[key] for r in rows if key in r][-1]
    m = config["model"]
    name = f"{m['model']} ({m['cell']} {m['hidden']})"
    runs[name] = report = json.load(open(path))
    print(f"{name}: {os.path.basename(wd.rstrip('/'))}, {last('model/params'):,.0f} "
          f"params, {last('step'):,} steps x batch {config['batch_size']} in "
          f"{train_seconds(rows) / 60:.0f} min of train steps; test BLEU "
          f"{report['bleu']:.2f} on {report['sentences']} sentences "
          f"({report['signature']})")
  buckets = next(iter(runs.values()))["by_source_length"]
  label = lambda b: f"{b['lo']}+" if b["hi"] >= 1000 else f"{b['lo']}-{b['hi'] - 1}"
  print("\n| source words | sentences | " + " | ".join(runs) + " |")
  print("| --- | --- |" + " --- |" * len(runs))
  for i, b in enumerate(buckets):
    print(f"| {label(b)} | {b['n']} | " + " | ".join(
        f"{r['by_source_length'][i]['bleu']:.2f}" for r in runs.values()) + " |")
  as_rows = {n: [(b["lo"], b["hi"], b["n"], b["bleu"]) for b in r["by_source_length"]]
             for n, r in runs.items()}
  first = next(iter(as_rows))
  out = os.path.join(os.path.dirname(os.path.abspath(workdirs[0])), "bleu_by_length.png")
  viz.bleu_by_length(as_rows.pop(first), first, out, other=as_rows)
  print(f"\nplot: {os.path.relpath(out)}")


def params():
  from attnlab.models import bert, gpt, transformer
  one = jnp.ones((1, 4), jnp.int32)
  enc_dec = lambda d, h, ff: (transformer.Transformer(37000, d, h, ff, 6, 6),
                              (one, one > 0, one))
  bert_ = lambda d, h, ff, n: (bert.BERT(30522, d, h, ff, n), (one, one > 0))
  gpt2 = lambda d, h, n: (gpt.GPT(50257, d, h, 4 * d, n), (one,))
  rows = [
      ("Transformer base, EN-DE, 37k shared vocab", 65e6, enc_dec(512, 8, 2048), ""),
      ("Transformer big", 213e6, enc_dec(1024, 16, 4096), ""),
      ("BERT-base", 110e6, bert_(768, 12, 3072, 12), "ours includes the MLM head (0.6 M)"),
      ("BERT-large", 340e6, bert_(1024, 16, 4096, 24), "ours includes the MLM head (1.1 M)"),
      # Radford et al.'s Table 2 (117/345/762/1542 M) undercounts the
      # released checkpoints, which are the reference here.
      ("GPT-2 small (released)", 124.4e6, gpt2(768, 12, 12), "paper's Table 2: 117 M"),
      ("GPT-2 medium (released)", 354.8e6, gpt2(1024, 16, 24), "paper's Table 2: 345 M"),
      ("GPT-2 large (released)", 774.0e6, gpt2(1280, 20, 36), "paper's Table 2: 762 M"),
      ("GPT-2 XL (released)", 1557.6e6, gpt2(1600, 25, 48), "paper's Table 2: 1,542 M"),
  ]
  print("| model | published | ours (jax.eval_shape) | gap | note |")
  print("| --- | --- | --- | --- | --- |")
  for name, published, (model, args), note in rows:
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args))
    count = sum(x.size for x in jax.tree.leaves(shapes))
    print(f"| {name} | {published / 1e6:,.0f} M | {count / 1e6:,.1f} M | "
          f"{100 * (count / published - 1):+.1f}% | {note} |", flush=True)


def vision():
  from attnlab.models import resnet, swin, vit
  image = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  # (name, model, published parameters, published forward GMACs at 224 or None)
  rows = [("ViT-B/16", vit.ViT(**vit.parse_variant("B/16")), 86e6, 17.6),
          ("ViT-L/16", vit.ViT(**vit.parse_variant("L/16")), 307e6, 61.6),
          ("ViT-H/14", vit.ViT(**vit.parse_variant("H/14")), 632e6, 167.4),
          ("Swin-T", swin.Swin(**swin.parse_variant("T")), 28e6, 4.5),
          ("Swin-S", swin.Swin(**swin.parse_variant("S")), 50e6, 8.7),
          ("Swin-B", swin.Swin(**swin.parse_variant("B")), 88e6, 15.4),
          ("ResNet-50 (v1.5)", resnet.ResNet(depth=50), 25.5e6, 4.1),
          ("ResNet-50, non-local after stages 2, 3", resnet.ResNet(
              depth=50, nonlocal_stages=(2, 3)), None, None),
          # Its k^2 offsets unrolled: XLA's cost analysis counts a rolled
          # loop's body once.
          ("ResNet-50 layout, 7 x 7 local attention (SASA)",
           resnet.ResNet(depth=50, spatial="local", local_unroll=True), 18.0e6, None),
          ("LR-Net-50 (Hu et al.; the lectures)", None, 23.3e6, None)]
  print("| model | published params | ours | gap | published GMACs | ours: XLA GFLOP / 2 | gap |")
  print("| --- | --- | --- | --- | --- | --- | --- |")
  for name, model, published, gmacs in rows:
    if model is None:
      print(f"| {name} | {published / 1e6:,.1f} M | | | | | |")
      continue
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), image)
    count = sum(x.size for x in jax.tree.leaves(variables["params"]))
    ours = flops(lambda v, x: model.apply(v, x), variables, image) / 2e9
    gap = f"{100 * (ours / gmacs - 1):+.1f}%" if gmacs else ""
    gap_params = f"{100 * (count / published - 1):+.1f}%" if published else ""
    print(f"| {name} | {f'{published / 1e6:,.1f} M' if published else ''} | "
          f"{count / 1e6:,.1f} M | {gap_params} | {gmacs or ''} | {ours:.2f} | {gap} |",
          flush=True)
  print("\nattention weights in float32, 48 layers x 16 heads (one image):")
  for what, tokens in (("pixels as tokens, 128 x 128", 128 ** 2),
                       ("ViT-L/16 patches at 224 (14 x 14)", 14 ** 2)):
    entries = tokens ** 2
    print(f"  {what}: {entries:,} entries per matrix, x 48 x 16 x 4 bytes = "
          f"{entries * 48 * 16 * 4 / 2 ** 30:,.4g} GiB")
  model = vit.ViT(**vit.parse_variant("L/16"))
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), image)
  weights = lambda v, x: model.apply(v, x, return_weights=True)[1]["attention"]
  compiled = jax.jit(weights).lower(variables, image).compile()
  out = np.prod(jax.eval_shape(weights, variables, image).shape) * 4
  memory = compiled.memory_analysis()
  print(f"  XLA, our ViT-L/16 (24 layers x 16 heads, 197 tokens with the class "
        f"token): the attention weights it returns are {out / 2 ** 20:.1f} MiB "
        f"(24 x 16 x 197^2 x 4 bytes); the whole forward's temporaries "
        f"{memory.temp_size_in_bytes / 2 ** 20:,.1f} MiB")
  attention_memory_growth()


def attention_memory_growth():
  """XLA's memory analysis of compiled forwards (batch 1, float32) as the
  image side R doubles, next to the count of attention entries per layer
  and head: ViT's grow as tokens^2 = (R/p)^4, Swin's as tokens x M^2 (its
  first stage: (R/4)^2 x 49), pixels as tokens' as R^4."""
  from attnlab.models import swin, vit
  cases = [("ViT-B/16", vit.ViT(**vit.parse_variant("B/16")), (224, 448, 896),
            lambda R: ((R // 16) ** 2, (R // 16) ** 4)),
           ("Swin-T (M = 7)", swin.Swin(**swin.parse_variant("T")), (224, 448, 896),
            lambda R: ((R // 4) ** 2, (R // 4) ** 2 * 49)),
           ("pixels as tokens (ViT-Ti/1)", vit.ViT(**vit.parse_variant("Ti/1"), image_size=16),
            (16, 32, 64), lambda R: (R * R, R ** 4))]
  print("\nattention memory as the image side R doubles (one image, float32, "
        "temporaries of the compiled forward from XLA's memory analysis):\n")
  print("| model | R | tokens (first stage) | attention entries per layer and head | "
        "x previous | XLA temporaries | x previous |")
  print("| --- | --- | --- | --- | --- | --- | --- |")
  for name, model, sides, count in cases:
    before = None
    for R in sides:
      image = jax.ShapeDtypeStruct((1, R, R, 3), jnp.float32)
      variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), image)
      compiled = jax.jit(lambda v, x: model.apply(v, x)).lower(variables, image).compile()
      temps = compiled.memory_analysis().temp_size_in_bytes
      tokens, entries = count(R)
      grow = (f"{entries / before[0]:.0f}x", f"{temps / before[1]:.1f}x") if before else ("", "")
      print(f"| {name} | {R} | {tokens:,} | {entries:,} | {grow[0]} | "
            f"{temps / 2 ** 20:,.1f} MiB | {grow[1]} |", flush=True)
      before = (entries, temps)


def _percent(split):
  """The share of the training set a split string takes: "train[:5%]" -> 5."""
  m = re.fullmatch(r"\w+\[:(\d+(?:\.\d+)?)%\]", split)
  return float(m.group(1)) if m else 100.0


def _model_name(m):
  """A classification run's model in a few words, from its config.json."""
  if m["name"] == "resnet":
    extra = ", local attention" if m.get("spatial") == "local" else ""
    if m.get("nonlocal_stages"):
      extra += f", non-local after stages {', '.join(map(str, m['nonlocal_stages']))}"
    return f"ResNet-{m['variant']} w{m['width']}{extra}"
  if m["name"] == "swin":
    return f"Swin w{m['width']}, blocks {tuple(m['depths'])}, M = {m['window']}"
  return f"ViT {m['variant']} w{m['width']}"


def _finished_runs(workdirs, what, key="test/accuracy"):
  """Per finished run: (workdir, config, metrics rows, its test result
  `key`, or the whole test.json for key None); exits with one line when
  there are none or one is unfinished."""
  from attnlab import metrics as metrics_lib
  if not workdirs:
    sys.exit(f"error: give the workdirs of finished runs ({what})")
  runs = []
  for wd in workdirs:
    path = os.path.join(wd, "test.json")
    if not os.path.exists(path):
      sys.exit(f"error: {path} is missing: let the run finish (its test split is "
               "read once, at the end)")
    runs.append((wd, json.load(open(os.path.join(wd, "config.json"))),
                 metrics_lib.read_jsonl(os.path.join(wd, "metrics.jsonl")),
                 json.load(open(path)) if key is None else json.load(open(path))[key]))
  return runs


def _last(rows, key):
  return [r[key] for r in rows if key in r][-1]


def data_efficiency(*workdirs):
  """Finished classification runs of several models on shares of one
  training set: a table and a plot of test accuracy against the share."""
  from attnlab import viz
  curves, table = {}, []
  for _, config, rows, test in _finished_runs(
      workdirs, "e.g. --config.data.train_split=train[:5%]"):
    name = _model_name(config["model"])
    percent = _percent(config["data"]["train_split"])
    curves.setdefault(name, []).append((percent, test))
    table.append((percent, name, _last(rows, "model/params"), config["total_steps"],
                  _last(rows, "time/wall_sec") / 60, _last(rows, "eval/accuracy"), test))
  print("| training set | model | params | steps | wall minutes | validation acc. "
        "(last eval) | test acc. |")
  print("| --- | --- | --- | --- | --- | --- | --- |")
  for percent, name, n, steps, minutes, val, test in sorted(table):
    print(f"| {percent:g}% | {name} | {n / 1e6:.2f} M | {steps:,} | {minutes:.1f} | "
          f"{100 * val:.1f}% | {100 * test:.1f}% |")
  out = os.path.join(os.path.dirname(os.path.abspath(workdirs[0])), "data_efficiency.png")
  viz.by_data_fraction(curves, out)
  print(f"\nplot: {os.path.relpath(out)}")


def equal_time(*workdirs):
  """Finished classification runs given about equal training time (each
  one's steps from its measured step speed, `bench steps`): a table of
  their time and accuracy, and validation accuracy against wall-clock
  minutes in equal_time_<data source>.png beside the runs."""
  from attnlab import viz
  runs = _finished_runs(workdirs, "each with steps for the same training time")
  print("| run | model | params | steps | train minutes | wall minutes | validation acc. "
        "(last eval) | test acc. |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- |")
  for wd, config, rows, test in runs:
    print(f"| {os.path.basename(wd.rstrip('/'))} | {_model_name(config['model'])} | "
          f"{_last(rows, 'model/params') / 1e6:.2f} M | {config['total_steps']:,} | "
          f"{train_seconds(rows) / 60:.1f} | {_last(rows, 'time/wall_sec') / 60:.1f} | "
          f"{100 * _last(rows, 'eval/accuracy'):.1f}% | {100 * test:.1f}% |")
  out = os.path.join(os.path.dirname(os.path.abspath(workdirs[0])),
                     f"equal_time_{runs[0][1]['data']['source']}.png")
  viz.compare_runs({os.path.basename(wd.rstrip("/")): rows for wd, _, rows, _ in runs},
                   "eval/accuracy", out, x="minutes")
  print(f"\nplot: {os.path.relpath(out)}")


def features(dino_run=None, *others):
  """A DINO run's k-NN / linear-probe curves against other runs' features."""
  from attnlab import metrics as metrics_lib
  from attnlab import viz
  if not dino_run:
    sys.exit("error: give a finished DINO run, then runs of other features (e.g. "
             "configs/vit.py:fmnist,probe=True --config.init_from=SUPERVISED_RUN)")
  keys = ("knn_accuracy", "probe_accuracy")
  curves, references, table = {}, {}, []
  for wd in (dino_run, *others):
    path = os.path.join(wd, "test.json")
    if not os.path.exists(path):
      sys.exit(f"error: {path} is missing: let the run finish (its test split is "
               "read once, at the end)")
    test = json.load(open(path))
    config = json.load(open(os.path.join(wd, "config.json")))
    rows = metrics_lib.read_jsonl(os.path.join(wd, "metrics.jsonl"))
    wall = [(r["step"], r["time/wall_sec"] / 60) for r in rows if "time/wall_sec" in r]
    evals = [r for r in rows if "eval/knn_accuracy" in r]
    if not evals or not all(f"test/{k}" in test for k in keys):
      sys.exit(f"error: {wd} has no k-NN and probe evaluations (config.knn_k > 0 and "
               "config.linear_probe, or a DINO run)")
    if config["experiment"] == "dino":
      m = config["model"]
      shape = (f"ViT {m['depth']} x {m['width']}, patch {m['variant'].split('/')[-1]}"
               if m.get("depth") and m.get("width") else m["variant"])  # the variant's or its own
      name = f"DINO {shape}, no labels"
      for r in evals:
        minutes = float(np.interp(r["step"], *zip(*wall))) if r["step"] else 0.0
        label = "random init" if r["step"] == 0 else f"step {r['step']:,}"
        table.append((name, label, minutes, r["eval/knn_accuracy"], r["eval/probe_accuracy"]))
        for k in keys:
          curves.setdefault(k, []).append((minutes, r[f"eval/{k}"]))
    else:
      source = config.get("init_from") or wd
      name = f"{os.path.basename(os.path.normpath(source))} (frozen)"
      table.append((name, "", None, evals[-1]["eval/knn_accuracy"],
                    evals[-1]["eval/probe_accuracy"]))
      references[name] = {k: evals[-1][f"eval/{k}"] for k in keys}
    table.append((name, f"test, step {test['step']:,}", None, test["test/knn_accuracy"],
                  test["test/probe_accuracy"]))
  print("| features | point | wall minutes | k-NN acc. | linear-probe acc. |")
  print("| --- | --- | --- | --- | --- |")
  for name, label, minutes, k, lin in table:
    split = "test" if label.startswith("test") else "validation"
    print(f"| {name} | {label or 'validation'} | "
          f"{'' if minutes is None else f'{minutes:.1f}'} | {100 * k:.1f}% ({split}) | "
          f"{100 * lin:.1f}% ({split}) |")
  out = os.path.join(os.path.dirname(os.path.abspath(dino_run)), "features.png")
  viz.feature_curves(curves, references, out)
  print(f"\nplot: {os.path.relpath(out)}")


def soft_vs_hard(*workdirs):
  """Finished captioning runs (configs/caption.py, several seeds of soft
  and of hard attention, same data, encoder and steps): test BLEU-1..4 per
  run and as mean +- standard deviation over seeds, and every seed's
  training and validation loss on one plot (captions_soft_vs_hard.png
  beside the runs)."""
  from attnlab import viz
  runs = _finished_runs(workdirs, "captioning runs of soft and hard attention", key=None)
  orders = (1, 2, 3, 4)
  groups = {}
  print("| run | attention | seed | steps | train minutes | wall minutes | validation BLEU-4 "
        "(last eval; / each distinct caption set once) | test BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | test BLEU-4, each distinct "
        "caption set once |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
  distinct = lambda test: (f"{test['test/distinct_bleu4']:.2f}"
                           if "test/distinct_bleu4" in test else "")
  for wd, config, rows, test in runs:
    kind = config["caption"]["attention"]
    groups.setdefault(kind, []).append((rows, test, _last(rows, "eval/bleu4")))
    validation = f"{_last(rows, 'eval/bleu4'):.2f}"
    if any("eval/distinct_bleu4" in r for r in rows):
      validation += f" / {_last(rows, 'eval/distinct_bleu4'):.2f}"
      test = dict(test, validation_distinct=_last(rows, "eval/distinct_bleu4"))
      groups[kind][-1] = (rows, test, groups[kind][-1][2])
    print(f"| {os.path.basename(wd.rstrip('/'))} | {kind} | {config['seed']} | "
          f"{config['total_steps']:,} | {train_seconds(rows) / 60:.1f} | "
          f"{_last(rows, 'time/wall_sec') / 60:.1f} | {validation} | "
          + " | ".join(f"{test[f'test/bleu{n}']:.2f}" for n in orders) + f" | {distinct(test)} |")
  print("\n| attention | seeds | validation BLEU-4 (/ distinct) | test BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | "
        "test BLEU-4, each distinct caption set once |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- |")
  spread = lambda xs: f"{np.mean(xs):.2f} +- {np.std(xs, ddof=1) if len(xs) > 1 else 0.0:.2f}"
  for kind, got in sorted(groups.items(), reverse=True):  # soft first
    both = [t["test/distinct_bleu4"] for _, t, _ in got if "test/distinct_bleu4" in t]
    held = [t["validation_distinct"] for _, t, _ in got if "validation_distinct" in t]
    validation = spread([v for _, _, v in got]) + (
        f" / {spread(held)}" if len(held) == len(got) else "")
    print(f"| {kind} | {len(got)} | {validation} | " + " | ".join(
        spread([t[f"test/bleu{n}"] for _, t, _ in got]) for n in orders)
        + f" | {spread(both) if len(both) == len(got) else ''} |")
  out = os.path.join(os.path.dirname(os.path.abspath(workdirs[0])), "captions_soft_vs_hard.png")
  viz.seed_curves({kind: [rows for rows, _, _ in got] for kind, got in groups.items()},
                  ("train/word_nll", "train/penalty", "eval/loss", "eval/bleu4"), out)
  print(f"\nplot: {os.path.relpath(out)}")


def caption_baselines(workdir=None):
  """BLEU-1..4 of two captioners without a model (Experiment.baselines),
  on the validation and test splits of a captioning run's data."""
  from attnlab import main as main_lib
  if not workdir:
    sys.exit("error: give the workdir of a captioning run (its data and vocabulary)")
  config = main_lib.load_run(workdir)
  exp = main_lib.experiment_module(config).Experiment(config, workdir)
  print("| captioner | split | BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | BLEU-4, each distinct caption set once |")
  print("| --- | --- | --- | --- | --- | --- | --- |")
  for split in (config.data.eval_split, config.data.test_split):
    for name, scores in exp.baselines(split).items():
      print(f"| {name} | {split} | " + " | ".join(f"{scores[f'bleu{n}']:.2f}" for n in range(1, 5))
            + f" | {scores['distinct_bleu4']:.2f} |")


def compare(*workdirs):
  """Finished char-LM runs, one row each, from config.json and metrics.jsonl."""
  import json
  import jax
  from attnlab import metrics as metrics_lib
  from experiments import lm
  print(f"{'run':<22}{'cell':<6}{'hidden':>7}{'params':>10}{'steps':>7}"
        f"{'wall min':>10}{'tok/s':>8}{'MFU':>6}{'held-out nats/char':>20}"
        f"{'bits/char':>10}")
  for wd in workdirs:
    config = json.load(open(os.path.join(wd, "config.json")))
    rows = metrics_lib.read_jsonl(os.path.join(wd, "metrics.jsonl"))
    last = lambda key: [r[key] for r in rows if key in r][-1]
    speeds = [r["train/tokens_per_sec"] for r in rows if "train/tokens_per_sec" in r]
    mfus = [r["train/mfu"] for r in rows if "train/mfu" in r]
    m = config["model"]
    vocab = len(json.load(open(os.path.join(wd, "vocab.json")))["chars"])
    model = lm.rnn_lm.RNNLM(vocab_size=vocab, cell=m["cell"], hidden=m["hidden"],
                            num_layers=m["num_layers"], embed=m["embed"])
    shapes = jax.eval_shape(lambda: model.init(
        jax.random.PRNGKey(0), jax.numpy.zeros((1, 2), "int32"),
        model.zero_carry(1)))
    params = sum(x.size for x in jax.tree.leaves(shapes))
    print(f"{os.path.basename(wd.rstrip('/')):<22}{m['cell']:<6}{m['hidden']:>7}"
          f"{params:>10,}{rows[-1]['step']:>7}"
          f"{last('time/wall_sec') / 60:>10.1f}"
          f"{sorted(speeds)[len(speeds) // 2]:>8,.0f}"
          f"{100 * sorted(mfus)[len(mfus) // 2]:>5.0f}%"
          f"{last('eval/loss'):>20.3f}{last('eval/bits_per_char'):>10.3f}")


def curves(*args):
  """`key` of several runs on one plot (PNG), against steps or minutes."""
  import argparse
  from attnlab import metrics as metrics_lib
  from attnlab import viz
  parser = argparse.ArgumentParser(prog="./launch.sh tables curves")
  parser.add_argument("runs", nargs="+")
  parser.add_argument("--key", default="train/loss")
  parser.add_argument("--x", choices=("step", "minutes"), default="step")
  parser.add_argument("--out", default="runs/curves.png")
  parser.add_argument("--max_step", type=int, default=0, help="0: all")
  a = parser.parse_args(args)
  runs = {os.path.basename(wd.rstrip("/")):
          [r for r in metrics_lib.read_jsonl(os.path.join(wd, "metrics.jsonl"))
           if not a.max_step or r["step"] <= a.max_step] for wd in a.runs}
  viz.compare_runs(runs, a.key, a.out, a.x)
  for label, rows in runs.items():
    pts = [(r["step"], r[a.key]) for r in rows if a.key in r]
    if pts:
      print(f"{label:<24} {a.key} at step {pts[-1][0]}: {pts[-1][1]:.4f}")
  print(f"wrote {a.out}")


def gradflow(*workdirs, distances=(1, 2, 4, 8, 16, 32, 64, 100), windows=8):
  """Norm of the gradient of the loss at the last character with respect to
  the recurrent state d characters earlier (Bengio et al. 1994; Pascanu et
  al. 2013): it vanishes geometrically in a vanilla RNN."""
  import json
  import jax
  import jax.numpy as jnp
  import ml_collections
  import numpy as np
  import optax
  from attnlab import train as train_lib
  from attnlab.data import text as text_lib
  from experiments import lm
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4))
  print(f"{'run':<16}" + "".join(f"{'d=' + str(d):>10}" for d in distances))
  for wd in workdirs:
    config = ml_collections.ConfigDict(json.load(open(os.path.join(wd, "config.json"))))
    exp = lm.Experiment(config, wd)
    params = train_lib.Trainer(config, exp, wd).restore_params()["params"]
    params = jax.device_get(params)
    text = text_lib.load_text(config.data, config.data.eval_split)
    model = exp.model

    @jax.jit
    def grad_norm(carry, tokens, target):
      def loss(c):
        logits, _ = model.apply({"params": params}, tokens, c)
        return optax.softmax_cross_entropy_with_integer_labels(
            logits[:, -1], target).sum()
      g = jax.grad(loss)(carry)
      return jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree.leaves(g)))

    norms = []
    for d in distances:
      vals = []
      for w in range(windows):
        start = 5000 + w * 1000
        ids = jnp.asarray(exp.vocab.encode(text[start:start + 200 + d + 1]))[None]
        _, aux = model.apply({"params": params}, ids[:, :200], model.zero_carry(1))
        vals.append(float(grad_norm(aux["carry"], ids[:, 200:200 + d],
                                    ids[:, 200 + d])))
      norms.append(np.mean(vals))
    name = f"{config.model.cell} ({os.path.basename(wd.rstrip('/'))})"
    print(f"{config.model.cell:<16}" + "".join(f"{n:>10.2e}" for n in norms))
    ax.semilogy(distances, norms, marker="o", label=name)
  ax.set_xlabel("distance d (characters)")
  ax.set_ylabel("|d loss_T / d state_{T-d}|")
  ax.set_title("How far back the gradient reaches")
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  out = os.path.join(os.path.dirname(workdirs[0].rstrip("/")), "gradflow.png")
  fig.savefig(out, dpi=100)
  print(f"plot: {out}")


TABLES = {"complexity": complexity, "params": params, "bleu_by_length": bleu_by_length,
          "vision": vision, "data_efficiency": data_efficiency, "equal_time": equal_time, "features": features,
          "soft_vs_hard": soft_vs_hard, "caption_baselines": caption_baselines,
          "compare": compare, "curves": curves, "gradflow": gradflow}


def main():
  name = sys.argv[1] if len(sys.argv) > 1 else ""
  if name not in TABLES:
    sys.exit(f"error: unknown table {name!r}; use one of {sorted(TABLES)}")
  print(f"$ ./launch.sh tables {' '.join(sys.argv[1:])}")
  TABLES[name](*sys.argv[2:])


if __name__ == "__main__":
  main()
