"""A small experiment that uses every part of the trainer's state, for the
tests: BatchNorm statistics (model_state), an EMA of the updated params
(extra, through post_update), the step in the loss context, and taking a
pretrained run's params and statistics (init_from). Regression of a fixed
random function on synthetic rows; config: tests/toy_config.py.
"""
import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np

from attnlab import checkpoint as ckpt_lib
from attnlab import experiment as experiment_lib

ROWS, FEATURES = 512, 4


def data(seed):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(ROWS, FEATURES)).astype(np.float32) * 3 + 1
  y = np.sin(x @ rng.normal(size=(FEATURES, 1))).astype(np.float32)
  return x, y


class Net(nn.Module):

  @nn.compact
  def __call__(self, x, train):
    x = nn.Dense(16)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    return nn.Dense(1)(nn.relu(x))


class Experiment(experiment_lib.Experiment):
  whole_batch = "BatchNorm normalises over the batch"

  def __init__(self, config, workdir=None, read_data=True):
    super().__init__(config, workdir)
    self.model = Net()
    self.x, self.y = data(0)

  def abstract_batch(self, batch_size):
    return {"x": jax.ShapeDtypeStruct((batch_size, FEATURES), jnp.float32),
            "y": jax.ShapeDtypeStruct((batch_size, 1), jnp.float32)}

  def train_iter(self, local_batch, process_index, process_count):
    epochs = self.config.total_steps * self.config.batch_size // ROWS + 2
    ds = (grain.MapDataset.range(ROWS).repeat(epochs).shuffle(seed=self.config.seed)
          [process_index::process_count]
          .map(lambda i: {"x": self.x[i], "y": self.y[i]}))
    return iter(ds.batch(local_batch, drop_remainder=True).to_iter_dataset())

  def init(self, rng, batch_size):
    v = self.model.init(rng, jnp.zeros((batch_size, FEATURES)), train=False)
    return {"params": v["params"], "model_state": {"batch_stats": v["batch_stats"]},
            "extra": {"ema": v["params"]}}

  def loss(self, params, state, batch, ctx):
    out, updates = self.model.apply({"params": params, **state["model_state"]},
                                    batch["x"], train=True, mutable=["batch_stats"])
    loss = jnp.mean((out - batch["y"]) ** 2)
    return loss, ({"seen_step": ctx.step.astype(jnp.float32)},
                  dict(state, model_state=dict(updates)))

  def post_update(self, params, extra, step):
    m = self.config.ema_momentum
    return params, {"ema": jax.tree.map(lambda e, p: m * e + (1 - m) * p, extra["ema"], params)}

  def pretrained(self, params, model_state):
    if not self.config.init_from:
      return params, model_state, None
    params, model_state = ckpt_lib.load_variables(self.config.init_from)
    return params, model_state, self.config.init_from

  def evaluate(self, state, mesh, step, writer):
    del mesh, step, writer
    out = self.model.apply({"params": state["params"], **state["model_state"]},
                           jnp.asarray(self.x), train=False)
    return {"eval/loss": float(jnp.mean((out - self.y) ** 2))}

