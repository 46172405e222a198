"""The experiment contract: what an objective gives the trainer.

An experiment (experiments/<name>.py, or any module a config names with a
dotted `experiment`) defines `class Experiment(attnlab.experiment.Experiment)`.
The trainer (attnlab/train.py) owns the mesh, the sharded state, the jitted
step, checkpoints and the loop; the experiment owns its data, model, loss
and evaluations. The methods below without a default are the ones every
experiment writes; the rest have the defaults most need. `main.py` reads
`capabilities` to know which commands a run answers (`sample`, `attend`,
...), never probing for methods.

The train state the methods receive is a dict (attnlab/train.py):
  params, opt_state, step, and the non-trained state a loss reads and
  returns: model_state (BatchNorm statistics), carry (per-row state split
  like the batch: an RNN's hidden state across windows), extra (a DINO
  teacher and centre).
"""


class Experiment:
  # What one row of the batch is, in the progress line ("tokens", "images").
  item_name = "examples"
  # A sentence saying why the loss needs the whole batch at once (contrastive
  # negatives, BatchNorm statistics): gradient accumulation is then refused.
  whole_batch = None
  # Commands beyond train / eval / compile that a run of this experiment
  # answers: "sample" (text from a language model), "translate" (`sample
  # --text`), "attend" (attention maps of images), "caption", "retrieve".
  capabilities = frozenset()
  # post_update(params, extra, step) -> (params, extra), run inside the
  # step after the optimizer's update (an EMA teacher, a clamped parameter).
  post_update = None

  def __init__(self, config, workdir=None, read_data=True):
    """`read_data=False` builds the experiment for shapes only (`compile`
    ahead of time, benchmarks): no data is read, a text experiment takes
    `config.data.vocab_size` token ids (256 where the config has none)."""
    self.config, self.workdir = config, workdir

  @staticmethod
  def validate(config):
    """One-line `ConfigError`s for settings this experiment cannot run,
    before anything is read or compiled."""

  # --- written by every experiment -------------------------------------------
  def init(self, rng, batch_size):
    """{"params": ..., and any of "model_state", "carry", "extra"}."""
    raise NotImplementedError

  def loss(self, params, state, batch, ctx):
    """(loss, (metrics, state)) of one (micro)batch: `state` holds
    model_state, carry and extra in and out, `ctx` is a train.StepContext
    (rng, step, mesh, batch axis). A mean over a count that varies between
    batches (target tokens) returns the count as metrics["loss_weight"], so
    accumulated microbatches average exactly."""
    raise NotImplementedError

  def abstract_batch(self, batch_size):
    """{name: jax.ShapeDtypeStruct} of a global batch."""
    raise NotImplementedError

  def train_iter(self, local_batch, process_index, process_count):
    """A grain iterator of this process's rows (dicts of numpy arrays)."""
    raise NotImplementedError

  def evaluate(self, state, mesh, step, writer):
    """{"eval/...": float} on the validation split, during training."""
    raise NotImplementedError

  # --- defaults ----------------------------------------------------------------
  def items_per_step(self, batch_size):
    return batch_size

  def flops_per_step(self, batch_size):
    """Model FLOPs of a training step, where XLA's count is wrong (loops);
    None: XLA's count of the compiled step is used."""
    return None

  def pretrained(self, params, model_state):
    """A new run's (params, model_state, source) with some taken from a
    pretrained run; source None: nothing taken."""
    return params, model_state, None

  def finish(self, state, mesh, writer):
    """{"test/...": float}: the test split, read once after training (and
    by `eval --split test`), with the run's figures."""
    return {}
