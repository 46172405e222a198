"""The peers' own train steps, imported from their checkouts at run time
(fetched, never copied into this repository): big_vision's ViT and the flax
examples' WMT Transformer. Used by the CPU speed benchmarks
(vs_big_vision, vs_flax_wmt) and by the TPU compiler's side-by-side
(tpu_peers), so both time the same peer program.

The peers import packages for work no benchmark here does (TensorFlow for
gfile and input pipelines, torchvision for transforms): the stand-ins for
them are made here, in one place, and only when the package is missing.
"""
import os
import sys
import types


def import_big_vision(bv_dir):
  """big_vision's (optax, utils, configs.vit_i1k, models.vit) from a
  checkout. Its utils import TensorFlow for gfile only (checkpoint files,
  unused here): a stand-in, after flax's own probe for TensorFlow."""
  import importlib.util
  if not os.path.isdir(os.path.join(bv_dir, "big_vision", "models")):
    sys.exit(f"{bv_dir} has no big_vision/models: pass the root of a "
             "google-research/big_vision checkout")
  from flax.training import checkpoints  # noqa: F401
  stand_ins = {}
  if importlib.util.find_spec("tensorflow") is None:
    tf = types.ModuleType("tensorflow")
    tf.io = types.ModuleType("tensorflow.io")
    tf.io.gfile = types.ModuleType("tensorflow.io.gfile")
    stand_ins = {"tensorflow": tf, "tensorflow.io": tf.io, "tensorflow.io.gfile": tf.io.gfile}
  sys.modules.update(stand_ins)
  sys.path.insert(0, bv_dir)
  import big_vision.optax as bv_optax
  import big_vision.utils as bv_utils
  from big_vision.configs import vit_i1k
  from big_vision.models import vit as bv_vit
  for name in stand_ins:  # others (tfds, etils) probe for the real one
    del sys.modules[name]
  return bv_optax, bv_utils, vit_i1k, bv_vit


def big_vision_vit_step(bv_dir, variant):
  """big_vision's ViT training on ImageNet-1k as its configs/vit_i1k.py
  sets it up: (init(rng, images) -> state, update_fn(state, batch, rng) ->
  (state, metrics)). The update is its train.py update_fn without mixup
  (attnlab mixes in the input pipeline), with its gradient, parameter and
  update norms; labels are one-hot as its pipeline gives them."""
  import jax
  import jax.numpy as jnp
  import optax
  bv_optax, bv_utils, vit_i1k, bv_vit = import_big_vision(bv_dir)
  bv = vit_i1k.get_config(f"variant={variant}")
  model = bv_vit.Model(num_classes=bv.num_classes, **bv.model)
  loss_name = bv.get("loss", "sigmoid_xent")
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             jnp.zeros((1, 224, 224, 3)))["params"])
  tx, _ = bv_optax.make(bv, shapes, sched_kw=dict(
      total_steps=93_750, batch_size=bv.input.batch_size, data_size=1_281_167))

  def init(rng, images):
    params = model.init(rng, images[:1])["params"]
    params["head"]["bias"] = jnp.full_like(params["head"]["bias"], bv.init_head_bias)
    return {"params": params, "opt": tx.init(params)}

  def update_fn(train_state, batch, rng_model):
    def loss_fn(p):
      logits, _ = model.apply({"params": p}, batch["image"], train=True,
                              rngs={"dropout": rng_model})
      return getattr(bv_utils, loss_name)(logits=logits, labels=batch["labels"])
    p, opt = train_state["params"], train_state["opt"]
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, opt = tx.update(grads, opt, p)
    p = optax.apply_updates(p, updates)
    norm = lambda t: jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree.leaves(t)))
    return {"params": p, "opt": opt}, {"training_loss": loss, "l2_grads": norm(grads),
                                        "l2_params": norm(p), "l2_updates": norm(updates)}
  return init, update_fn


def import_flax_wmt(flax_dir):
  """google/flax's examples/wmt `models` and `train` modules, imported from
  a checkout at run time (never copied). Its train.py imports TensorFlow
  and its input pipeline at the top, for data no benchmark here uses:
  stand-ins let its real train_step and predict_step run."""
  if not os.path.exists(os.path.join(flax_dir, "train.py")):
    sys.exit(f"{flax_dir} has no train.py: pass the examples/wmt directory of "
             "a google/flax checkout")
  from flax.training import checkpoints  # noqa: F401  (probes for TF: before)
  stand_ins = [n for n in ("tensorflow", "input_pipeline", "clu.metric_writers",
                           "clu.periodic_actions") if n not in sys.modules]
  for name in stand_ins:
    sys.modules[name] = types.ModuleType(name)
  if "tensorflow" in stand_ins:  # a type annotation in train.py
    sys.modules["tensorflow"].data = types.SimpleNamespace(Dataset=object)
  sys.path.insert(0, flax_dir)
  import models as flax_models
  import train as flax_train
  for name in stand_ins:
    del sys.modules[name]
  return flax_models, flax_train


def flax_wmt_step(flax_dir, vocab, d_model, heads, d_ff, layers, dropout, attention_dropout,
                  dtype, length):
  """The flax examples' WMT training at these dims, as its train.py sets it
  up: (init(rng) -> its TrainState with optax.adamw, train_step(state,
  batch, dropout_rng=...) -> (state, metrics), label smoothing 0.1, to be
  run under its pmap axis "batch"). Batches are `inputs`/`targets` of
  `length` tokens."""
  import functools
  import jax.numpy as jnp
  import optax
  from flax import linen as nn
  flax_models, flax_train = import_flax_wmt(flax_dir)
  cfg = flax_models.TransformerConfig(
      vocab_size=vocab, output_vocab_size=vocab, share_embeddings=True,
      logits_via_embedding=True, dtype=jnp.dtype(dtype), emb_dim=d_model, num_heads=heads,
      num_layers=layers, qkv_dim=d_model, mlp_dim=d_ff, max_len=256, dropout_rate=dropout,
      attention_dropout_rate=attention_dropout, deterministic=False, decode=False,
      kernel_init=nn.initializers.xavier_uniform(),
      bias_init=nn.initializers.normal(stddev=1e-6))
  model = flax_models.Transformer(cfg.replace(deterministic=True))
  lr = flax_train.create_learning_rate_schedule(0.0625, 4000)

  def init(rng):
    tokens = jnp.zeros((1, length), jnp.int32)
    params = model.init(rng, tokens, tokens)["params"]
    return flax_train.TrainState.create(
        apply_fn=model.apply, params=params, dynamic_scale=None,
        tx=optax.adamw(lr, b1=0.9, b2=0.98, eps=1e-9, weight_decay=0.0))
  return init, functools.partial(flax_train.train_step, config=cfg, learning_rate_fn=lr,
                                 label_smoothing=0.1)


def torchvision_stand_in():
  """When torchvision cannot be imported (its wheel must match torch's
  build exactly), stand-in modules for every torchvision.* name, whose
  attributes are placeholder classes: a peer that imports torchvision only
  for data loading or optional layers (timm, the DINO code) then imports."""
  import importlib.abc
  import importlib.machinery
  import types
  try:
    import torchvision  # noqa: F401
    return
  except (ImportError, RuntimeError):
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
      del sys.modules[name]

  class Placeholder(type):  # any class attribute is another placeholder
    def __getattr__(cls, attr):
      if attr.startswith("__"):
        raise AttributeError(attr)
      return Placeholder(attr, (), {"__init__": lambda self, *a, **k: None})

  class StandIn(types.ModuleType):
    def __getattr__(self, attr):
      if attr.startswith("__"):
        raise AttributeError(attr)
      return Placeholder(attr, (), {"__init__": lambda self, *a, **k: None})

  class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
      if name == "torchvision" or name.startswith("torchvision."):
        return importlib.machinery.ModuleSpec(name, self, is_package=True)
      return None

    def create_module(self, spec):
      module = StandIn(spec.name)
      module.__path__ = []
      return module

    def exec_module(self, module):
      pass
  sys.meta_path.insert(0, Finder())
