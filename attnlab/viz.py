"""Figures: learning curves and text coloured by a neuron's activation.
PNG files in the workdir, the same images in TensorBoard."""
import html
import os

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from attnlab import metrics as metrics_lib  # noqa: E402
from attnlab import storage  # noqa: E402


def plot_curves(writer, step):
  """plots/curves.png: train and eval loss, learning rate, grad norm."""
  rows = metrics_lib.read_jsonl(writer.path)
  if not rows:
    return
  panels = [("loss", ["train/loss", "eval/loss"]), ("learning rate", ["train/lr"]),
            ("gradient norm", ["train/grad_norm"])]
  fig, axes = plt.subplots(1, len(panels), figsize=(13, 3.6))
  for ax, (title, keys) in zip(axes, panels):
    for key in keys:
      pts = [(r["step"], r[key]) for r in rows if key in r]
      if pts:
        ax.plot(*zip(*pts), marker="o" if key.startswith("eval") else None,
                label=key, markersize=3)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.legend()
    ax.grid(alpha=0.3)
  fig.tight_layout()
  writer.write_figure(step, "curves", fig, writer.workdir / "plots" / "curves.png")
  plt.close(fig)


def text_heatmap(text, values, title, path_base, width=100):
  """Text with each character's background coloured by `values` in [-1, 1]
  (blue negative, red positive), as PNG and HTML (`path_base` + ext)."""
  values = np.clip(np.asarray(values, np.float64), -1, 1)
  cmap = plt.get_cmap("coolwarm")
  lines, cur = [], []
  for c, v in zip(text, values):
    if c == "\n" or len(cur) >= width:
      lines.append(cur)
      cur = []
      if c == "\n":
        continue
    cur.append((c, v))
  lines.append(cur)
  lines = lines[:40]
  fig = plt.figure(figsize=(width * 0.09, len(lines) * 0.2 + 0.6))
  ax = fig.add_axes([0, 0, 1, 1])
  ax.set_xlim(0, width)
  ax.set_ylim(len(lines) + 1.5, 0)
  ax.axis("off")
  ax.text(0.2, 0.8, title, fontsize=9, weight="bold")
  for y, line in enumerate(lines, start=2):
    for x, (c, v) in enumerate(line):
      ax.add_patch(plt.Rectangle((x, y - 0.8), 1, 1, color=cmap((v + 1) / 2)))
      ax.text(x + 0.5, y - 0.3, c, fontsize=7, family="monospace",
              ha="center", va="center")
  storage.save_figure(fig, f"{path_base}.png", dpi=110)
  plt.close(fig)
  spans = "".join(
      "<br>" if c == "\n" else
      '<span style="background:rgb({},{},{})">{}</span>'.format(
          *[int(255 * x) for x in cmap((v + 1) / 2)[:3]], html.escape(c))
      for c, v in zip(text, values))
  storage.path(f"{path_base}.html").write_text(
      f"<html><body><h3>{html.escape(title)}</h3>"
      f'<div style="font-family:monospace">{spans}</div></body></html>\n')


def alignment(src_tokens, tgt_tokens, weights, path, writer=None, step=0, tag=None):
  """Heatmap of attention weights [target, source] (Bahdanau et al. 2015,
  Figure 3): which source words each target word looked at."""
  fig, ax = plt.subplots(figsize=(0.35 * len(src_tokens) + 2, 0.35 * len(tgt_tokens) + 1.5))
  ax.imshow(weights, cmap="gray", vmin=0, vmax=max(float(np.max(weights)), 1e-6))
  ax.set_xticks(range(len(src_tokens)), src_tokens, rotation=90, fontsize=8)
  ax.set_yticks(range(len(tgt_tokens)), tgt_tokens, fontsize=8)
  ax.set_xlabel("source")
  ax.set_ylabel("target")
  _save(fig, path, writer, step, tag)


def alignment_grid(src_tokens, tgt_tokens, weights, path, writer=None, step=0,
                   tag=None):
  """Encoder-decoder attention of every layer (rows) and head (columns),
  weights [layers, heads, target, source]."""
  layers, heads = weights.shape[:2]
  top = max(float(np.max(weights)), 1e-6)  # one scale for every panel
  cell = (0.22 * len(src_tokens) + 1.2, 0.22 * len(tgt_tokens) + 1.2)
  fig, axes = plt.subplots(layers, heads, squeeze=False,
                           figsize=(cell[0] * heads, cell[1] * layers))
  for l in range(layers):
    for h in range(heads):
      ax = axes[l, h]
      ax.imshow(weights[l, h], cmap="gray", vmin=0, vmax=top)
      ax.set_title(f"layer {l + 1} head {h + 1}", fontsize=8)
      ax.set_xticks(range(len(src_tokens)), src_tokens if l == layers - 1 else [],
                    rotation=90, fontsize=6)
      ax.set_yticks(range(len(tgt_tokens)), tgt_tokens if h == 0 else [], fontsize=6)
  _save(fig, path, writer, step, tag)


def _save(fig, path, writer, step, tag):
  """PNG at `path`, and a TensorBoard image too when a writer is given."""
  fig.tight_layout()
  if writer is not None:
    writer.write_figure(step, tag or os.path.basename(path), fig, path)
  else:
    storage.save_figure(fig, path)
  plt.close(fig)


def bleu_by_length(buckets, label, path, other=None):
  """BLEU against source sentence length (Bahdanau et al. 2015, Figure 2).
  `buckets`: [(lo, hi, n, bleu)]; `other`: {label: buckets} to overlay."""
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, rows in [(label, buckets)] + list((other or {}).items()):
    mids = [(lo + min(hi, 80)) / 2 for lo, hi, _, _ in rows]
    ax.plot(mids, [b for *_, b in rows], marker="o", label=name)
  ax.set_xlabel("source sentence length (words)")
  ax.set_ylabel("BLEU")
  ax.grid(alpha=0.3)
  ax.legend()
  _save(fig, path, None, 0, None)


def confusion(counts, classes, path, writer=None, step=0, title=""):
  """Confusion matrix counts [true, predicted] with each cell's count."""
  fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 2, 1.2 * len(classes) + 1.5))
  ax.imshow(counts, cmap="Blues")
  for (i, j), n in np.ndenumerate(counts):
    ax.text(j, i, str(n), ha="center", va="center",
            color="white" if n > counts.max() / 2 else "black")
  ax.set_xticks(range(len(classes)), classes)
  ax.set_yticks(range(len(classes)), classes)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title(title, fontsize=9)
  _save(fig, path, writer, step, "confusion")


def image_grid(pictures, captions, path, writer=None, step=0, title="", cols=5):
  """uint8 images [H, W, 3] in a grid, each with its caption underneath."""
  rows = -(-len(pictures) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2.2 * rows), squeeze=False)
  for ax in axes.ravel():
    ax.axis("off")
  for ax, picture, caption in zip(axes.ravel(), pictures, captions):
    ax.imshow(picture, interpolation="nearest")
    ax.set_title(caption, fontsize=8)
  fig.suptitle(title, fontsize=9)
  _save(fig, path, writer, step, os.path.splitext(os.path.basename(path))[0].split("_")[0])


def attention_maps(picture, maps, captions, path, writer=None, step=0, title="", cols=None,
                   vmax=None):
  """The image, then each map [h, w] (a patch grid) stretched over it as a
  translucent heatmap, one panel per map, `cols` panels a row (default:
  one row); colours from 0 to `vmax` in every panel (default: each map's
  own range)."""
  cols = cols or len(maps) + 1
  rows = -(-(len(maps) + 1) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.6 * rows), squeeze=False)
  panels = axes.ravel()
  height, width = picture.shape[:2]
  panels[0].imshow(picture, interpolation="nearest")
  panels[0].set_title("image", fontsize=8)
  for ax, m, caption in zip(panels[1:], maps, captions):
    ax.imshow(picture, interpolation="nearest")
    ax.imshow(m, cmap="inferno", alpha=0.6, extent=(-0.5, width - 0.5, height - 0.5, -0.5),
              interpolation="bilinear", vmin=0 if vmax else None, vmax=vmax)
    ax.set_title(caption, fontsize=8)
  for ax in panels:
    ax.axis("off")
  fig.suptitle(title, fontsize=9)
  _save(fig, path, writer, step, "attention")


def compare_runs(runs, key, path, x="step"):
  """One curve of `key` per run: {label: metrics rows}. x = "step" or
  "minutes": the run's wall clock (evals included), interpolated between
  the train rows that log it (an eval need not fall on a logging step)."""
  fig, ax = plt.subplots(figsize=(6.5, 4))
  for label, rows in runs.items():
    wall = sorted((r["step"], r["time/wall_sec"]) for r in rows if "time/wall_sec" in r)
    pts = [(r["step"], r[key]) for r in rows if key in r]
    if x == "minutes":
      pts = [(float(np.interp(s, *zip(*wall))) / 60, v) for s, v in pts
             if wall and wall[0][0] <= s <= wall[-1][0]]
    if pts:
      ax.plot(*zip(*pts), marker="o" if key.startswith("eval") else None,
              markersize=3, label=label)
  ax.set_xlabel("wall-clock minutes" if x == "minutes" else "step")
  ax.set_ylabel(key)
  ax.grid(alpha=0.3)
  ax.legend()
  _save(fig, path, None, 0, None)


def seed_curves(groups, keys, path):
  """One panel per metric key against the step; a colour per group
  ({label: [metrics rows of each seed]}), a line per seed: how much runs
  of one kind differ is their stability. Losses start after step 0 (an
  untrained model's loss would squash the rest of the curve)."""
  fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.6), squeeze=False)
  for ax, key in zip(axes[0], keys):
    for colour, (label, runs) in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"],
                                     sorted(groups.items(), reverse=True)):
      for i, rows in enumerate(runs):
        pts = [(r["step"], r[key]) for r in rows
               if key in r and (r["step"] > 0 or "loss" not in key)]
        if pts:
          ax.plot(*zip(*pts), color=colour, alpha=0.8, linewidth=1,
                  marker="o" if key.startswith("eval") else None, markersize=3,
                  label=f"{label} ({len(runs)} seeds)" if i == 0 else None)
    ax.set_xlabel("step")
    ax.set_title(key, fontsize=9)
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend(fontsize=8)
  _save(fig, path, None, 0, None)


def by_data_fraction(curves, path, ylabel="test accuracy"):
  """{label: [(percent of the training set, value)]} on a log x axis (the
  "ViT needs more data" comparison)."""
  fig, ax = plt.subplots(figsize=(6, 4))
  for label, pts in curves.items():
    ax.plot(*zip(*sorted(pts)), marker="o", label=label)
  ax.set_xscale("log")
  ticks = sorted({p for pts in curves.values() for p, _ in pts})
  ax.set_xticks(ticks, [f"{p:g}%" for p in ticks])
  ax.set_xlabel("training set used")
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3)
  ax.legend()
  _save(fig, path, None, 0, None)


def feature_curves(curves, references, path):
  """k-NN and linear-probe accuracy over wall-clock minutes ({metric:
  [(minutes, value)]}) with other features' values as dashed lines
  ({name: {metric: value}})."""
  fig, ax = plt.subplots(figsize=(6.5, 4))
  names = {"knn_accuracy": "k-NN", "probe_accuracy": "linear probe"}
  for i, (key, pts) in enumerate(curves.items()):
    ax.plot(*zip(*sorted(pts)), marker="o", color=f"C{i}", label=f"DINO {names[key]}")
    for j, (name, values) in enumerate(references.items()):
      ax.axhline(values[key], color=f"C{i}", ls=("--", ":", "-.")[j % 3], lw=1,
                 label=f"{name} {names[key]}")
  ax.set_xlabel("wall-clock minutes of DINO training (0: random init)")
  ax.set_ylabel("validation accuracy")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  _save(fig, path, None, 0, None)
