"""The trainer: one loop for every experiment.

An experiment (experiments/<name>.py) gives the objective; the trainer gives
the mesh, sharded state, the jitted step, gradient accumulation, clipping,
the NaN guard, metrics, evals, checkpoints and resumption. The train state is
a dict:

  step         completed steps (int32)
  params       trained parameters
  opt_state    optax state
  model_state  flax mutable collections of the model that are not trained
               (BatchNorm statistics); sharded like params, carried by
               `average` and taken over with the params by `pretrained`
  carry        per-example state with a leading batch axis, split like the
               batch (e.g. an RNN's hidden state carried across windows)
  extra        other non-trained state of the objective (a DINO teacher and
               centre); sharded like params
  rng          base key; step s uses fold_in(rng, s)
  bad_step     first step whose loss or gradient was not finite, else -1
               (the run stops at its next log, evaluation or save: nothing
               after it is saved)

What an experiment provides, and its defaults: attnlab/experiment.py.
"""
import collections
import contextlib
import dataclasses
import functools
import json
import signal
import tempfile
import time

from absl import logging
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax

from attnlab import checkpoint as ckpt_lib
from attnlab import config as config_lib
from attnlab import cost
from attnlab import metrics as metrics_lib
from attnlab import optim as optim_lib
from attnlab import sharding as sharding_lib
from attnlab import storage
from attnlab import viz


class NonFiniteError(RuntimeError):
  pass


def log(msg):
  if jax.process_index() == 0:
    print(msg, flush=True)


def _microbatches(tree, k):
  """[B, ...] -> [k, B/k, ...] taking every k-th row, so each microbatch
  keeps its rows on the devices that hold them (no resharding)."""
  return jax.tree.map(
      lambda x: jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1),
      tree)


def _unmicrobatch(tree):
  return jax.tree.map(
      lambda x: jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:]), tree)


@dataclasses.dataclass(frozen=True)
class StepContext:
  """What a loss may need besides params, state and batch.

  rng: this (micro)batch's key. step: the step being taken (0-based, a
  traced int32: for schedules inside the loss). mesh and batch_axis: for
  collectives over the global batch under `jax.shard_map`.
  """
  rng: jax.Array
  step: jax.Array
  mesh: jax.sharding.Mesh
  batch_axis: object = "data"  # sharding.batch_axes(mesh): a name or names


STATE_KEYS = ("model_state", "carry", "extra")  # what a loss reads and returns


def make_train_step(loss_fn, tx, schedules, grad_accum, mesh, post_update=None,
                    gather=None):
  """jit-able `(state, batch) -> (state, metrics)`.

  `loss_fn(params, state, batch, ctx) -> (loss, (metrics, state))` is the
  experiment's objective on one (micro)batch; `schedules` ({"lr": fn of
  the step, ...}) are logged; `post_update(params, extra, step) -> (params, extra)`
  runs after the optimizer update. `gather` (`config.gather_params`):
  the loss sees `gather(params)`, differentiated through (the gradients
  come back in the parameters' dtype and split like them; taking them
  of the gathered copy and splitting them after, the compiler fused the
  split into the weight gradients' matmuls, 23.45 ms estimated for
  ViT-B/16 on v5e-4 against 17.57). With gradient accumulation each
  microbatch gathers again.
  """
  objective = loss_fn if gather is None else lambda p, *a: loss_fn(gather(p), *a)
  grad_fn = jax.value_and_grad(objective, has_aux=True)

  def step_fn(state, batch):
    rng = jax.random.fold_in(state["rng"], state["step"])
    ctx = lambda key: StepContext(key, state["step"], mesh, sharding_lib.batch_axes(mesh))
    params = state["params"]
    aux = {k: state[k] for k in STATE_KEYS}
    if grad_accum == 1:
      (loss, (metrics, aux)), grads = grad_fn(params, aux, batch, ctx(rng))
    else:
      # Microbatches in turn; model_state and extra pass from one to the
      # next, carry is split like the batch. A loss averaged over a varying
      # count (metrics["loss_weight"]) is weighted by it: sum(w_i g_i) /
      # sum(w_i) is then the gradient of the whole batch's mean.
      def one(acc, xs):
        grads_sum, weight_sum, kept, i = acc
        mb, mc = xs
        (l, (m, out)), g = grad_fn(params, dict(kept, carry=mc), mb,
                                   ctx(jax.random.fold_in(rng, i)))
        w = m.get("loss_weight", jnp.ones((), jnp.float32))
        grads_sum = jax.tree.map(lambda a, b: a + w * b, grads_sum, g)
        kept = {k: out[k] for k in ("model_state", "extra")}
        return (grads_sum, weight_sum + w, kept, i + 1), (l * w, w, m, out["carry"])
      zeros = jax.tree.map(jnp.zeros_like, params)
      kept = {k: aux[k] for k in ("model_state", "extra")}
      (grads, weight, kept, _), (losses, weights, metrics, carry) = jax.lax.scan(
          one, (zeros, jnp.zeros((), jnp.float32), kept, 0),
          (_microbatches(batch, grad_accum), _microbatches(aux["carry"], grad_accum)))
      grads = jax.tree.map(lambda g: g / weight, grads)
      loss = losses.sum() / weight
      metrics = {k: v.sum(0) if k == "loss_weight" else
                 jnp.tensordot(weights, v, 1) / weight for k, v in metrics.items()}
      aux = dict(kept, carry=_unmicrobatch(carry))
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    new_params = optax.apply_updates(params, updates)
    if post_update is not None:
      new_params, extra = post_update(new_params, aux["extra"], state["step"])
      aux = dict(aux, extra=extra)
    # NaN guard: the first step whose loss or gradient is not finite is
    # remembered; the loop then stops at its next logging, evaluation or
    # save, and no state from that step on is ever saved. (Keeping the old
    # state instead, a select over every parameter and moment, made the
    # update wait for a separate pass over the gradients for their norm:
    # 14% of WMT big's step on the TPU compiler's estimate.)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new_state = dict(
        step=state["step"] + 1, params=new_params, opt_state=opt_state,
        **{k: aux[k] for k in STATE_KEYS}, rng=state["rng"],
        bad_step=jnp.where((state["bad_step"] < 0) & ~finite, state["step"],
                           state["bad_step"]))
    metrics = {**metrics, "loss": loss, "grad_norm": grad_norm,
               **{k: f(state["step"]) for k, f in schedules.items()}}
    return new_state, metrics
  return step_fn


class DevicePutAhead:
  """The training iterator's global batches, `ahead` of them fetched and put
  on the devices while the current step runs (`fill` after dispatching it).

  Saved and restored in checkpoints in place of the iterator it wraps, as
  that iterator's state when the step's batch was taken: the prefetched
  batches are fetched again after a resume, never skipped.
  """

  def __init__(self, iterator, mesh, ahead):
    self.iterator, self.mesh, self.ahead = iterator, mesh, ahead
    self.queue = collections.deque()  # (iterator state before it, batch)
    self._dict_state = isinstance(iterator, grain.DatasetIterator)

  def _fetch(self):
    before = self.iterator.get_state()
    self.queue.append((before, sharding_lib.global_batch(next(self.iterator), self.mesh)))

  def fill(self, left):
    """Tops the queue up to `ahead` batches, no more than `left` steps need."""
    while len(self.queue) < min(self.ahead, left):
      self._fetch()

  def next(self):
    if not self.queue:
      self._fetch()
    return self.queue.popleft()[1]

  # grain's checkpoint handler: bytes for an iterator that is not a
  # grain.DatasetIterator; json text of the state dict for one that is.
  def get_state(self):
    state = self.queue[0][0] if self.queue else self.iterator.get_state()
    return json.dumps(state, indent=4).encode() if self._dict_state else state

  def set_state(self, state):
    self.queue.clear()
    self.iterator.set_state(json.loads(state) if self._dict_state else state)

  def start_prefetch(self):
    if hasattr(self.iterator, "start_prefetch"):
      self.iterator.start_prefetch()


class Trainer:
  """Builds the mesh and sharded state for an experiment and trains it."""

  def __init__(self, config, experiment, workdir, devices=None):
    """`devices`: the mesh's devices, by default this machine's (a TPU
    slice's abstract chips to compile for one elsewhere)."""
    self.config, self.exp, self.workdir = config, experiment, workdir
    # Process-wide, so set before any key is made: every random number of
    # the run (init, dropout) comes from this generator.
    jax.config.update("jax_default_prng_impl", config.get("prng_impl", "threefry2x32"))
    self.mesh = sharding_lib.make_mesh(config.mesh, devices)
    self.local_batch = sharding_lib.local_batch_size(config.batch_size, self.mesh)
    if config.grad_accum > 1 and experiment.whole_batch:
      raise config_lib.ConfigError(
          "grad_accum", f"{config.grad_accum} would split a loss over the whole batch "
          f"({experiment.whole_batch})", "set --config.grad_accum=1 (lower "
          "batch_size, or use more devices, to fit memory)")
    variables = jax.eval_shape(self._init_vars, jax.random.PRNGKey(0))
    params = variables["params"]
    sharding_lib.check_rules(config.param_sharding, variables, self.mesh)
    self.tx, self.schedules = optim_lib.make_optimizer(
        config.optim, config.total_steps, params)
    self.writer = metrics_lib.MetricsWriter(workdir, jax.process_index() == 0)
    self.ckpt = ckpt_lib.Checkpointer(workdir, config.keep_ckpts)
    self._stop_requested = False

  # --- state -------------------------------------------------------------
  def _init_vars(self, rng):
    out = self.exp.init(rng, self.config.batch_size)
    return {"params": out["params"], **{k: out.get(k, {}) for k in STATE_KEYS}}

  def _init_state(self, rng):
    v = self._init_vars(rng)
    return dict(step=jnp.zeros((), jnp.int32), params=v["params"],
                opt_state=self.tx.init(v["params"]),
                **{k: v[k] for k in STATE_KEYS},
                rng=jax.random.fold_in(rng, 1), bad_step=-jnp.ones((), jnp.int32))

  def state_shardings(self, abstract):
    rules = [tuple(r) for r in self.config.param_sharding]
    shard = lambda tree: sharding_lib.param_shardings(tree, self.mesh, rules)
    rep = sharding_lib.replicated(self.mesh)
    params = shard(abstract["params"])
    return dict(step=rep, params=params,
                opt_state=sharding_lib.optimizer_shardings(
                    self.tx, abstract["opt_state"], abstract["params"], params, rep),
                model_state=shard(abstract["model_state"]),
                carry=jax.tree.map(lambda _: sharding_lib.batch_sharding(self.mesh),
                                   abstract["carry"]),
                extra=shard(abstract["extra"]), rng=rep, bad_step=rep)

  def abstract_state(self):
    rng = jax.random.PRNGKey(self.config.seed)
    abstract = jax.eval_shape(self._init_state, rng)
    shardings = self.state_shardings(abstract)
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract, shardings), shardings

  def create_state(self):
    """Params and optimizer state created already sharded (no host copy)."""
    _, shardings = self.abstract_state()
    rng = jax.random.PRNGKey(self.config.seed)
    return jax.jit(self._init_state, out_shardings=shardings)(rng)

  def restore_params(self, step=None):
    """Params (and the rest of the state) of the newest or a given step."""
    abstract, _ = self.abstract_state()
    if step is None:
      return self.ckpt.restore_newest(abstract, None)
    return self.ckpt.restore(step, abstract)

  def step_fn(self):
    gather = None
    if self.config.gather_params:
      dtype = self.config.get("model", {}).get("dtype", "float32")
      gather = functools.partial(sharding_lib.gather_whole, mesh=self.mesh, dtype=dtype)
    return make_train_step(self.exp.loss, self.tx, self.schedules,
                           self.config.grad_accum, self.mesh,
                           self.exp.post_update, gather)

  # --- loop --------------------------------------------------------------
  def train(self):
    config, exp = self.config, self.exp
    devices = self.mesh.devices.size
    log(f"devices: {jax.device_count()} total, {devices} in mesh "
        f"{dict(self.mesh.shape)}, {jax.process_count()} process(es)")
    log(f"batch: global {config.batch_size}, per host {self.local_batch}, per device "
        f"{config.batch_size // sharding_lib.batch_devices(self.mesh)}, accumulation "
        f"{config.grad_accum} x {config.batch_size // config.grad_accum}")
    t_start = time.time()
    data = DevicePutAhead(exp.train_iter(self.local_batch, jax.process_index(),
                                         jax.process_count()),
                          self.mesh, config.get("device_put_ahead", 1))
    peak, peak_source = cost.peak_flops(config)
    if not peak:
      # The peak matmul rate is measured twice, here and after compiling (a
      # machine busy at one moment is rarely busy at both); the larger wins.
      cost.measured_peak_flops()
    abstract, shardings = self.abstract_state()
    state = self.ckpt.restore_newest(abstract, data)
    if state is None:
      state = self.create_state()
      # fine-tuning: some parameters from another run
      params, model_state, source = exp.pretrained(state["params"], state["model_state"])
      if source:
        params = jax.device_put(params, shardings["params"])
        state = dict(state, params=params, opt_state=jax.jit(
            self.tx.init, out_shardings=shardings["opt_state"])(params),
            model_state=jax.device_put(model_state, shardings["model_state"]))
        log(f"parameters from {source}")
      log(f"initialised new run in {self.workdir}")
    else:
      log(f"resumed from checkpoint at step {int(state['step'])}")
    if jax.process_index() == 0:
      from clu import parameter_overview
      logging.info("params:\n%s",
                   parameter_overview.get_parameter_overview(state["params"]))
    log(f"params: {param_count(state['params']):,}")

    step_fn = self.step_fn()
    train_step = jax.jit(step_fn, donate_argnums=(0,),
                         out_shardings=(shardings, sharding_lib.replicated(self.mesh)))
    step = int(state["step"])
    self._install_signal_handlers()
    first_batch = data.next()
    with jax.set_mesh(self.mesh):  # the layers pin activations to its batch axes
      compiled = train_step.lower(state, first_batch).compile()
    flops, how = cost.flops_per_step(exp, config, compiled, devices)
    peak = peak or cost.measured_peak_flops()
    compile_sec = time.time() - t_start
    log(f"compiled train step in {compile_sec:.1f}s from start; "
        f"{flops / 1e9:.2f} GFLOP/step ({how}), peak {peak / 1e9:.1f} GFLOP/s/device "
        f"for MFU ({peak_source})")
    if config.eval_at_start and config.eval_every and step == 0:
      self.evaluate(state, 0)
    progress = metrics_lib.Progress(config.total_steps)
    batch, window_t0, window_steps = first_batch, time.time(), 0
    items_per_step = exp.items_per_step(config.batch_size)

    first_step = step + 1  # of this process: logged, and starts the ETA clock
    while step < config.total_steps:
      state, metrics = compiled(state, batch)
      step += 1
      data.fill(left=config.total_steps - step)  # while the step runs
      window_steps += 1
      logs = (step == first_step or step == config.total_steps
              or step % config.log_every == 0)
      saves = step == config.total_steps or (config.ckpt_every
                                             and step % config.ckpt_every == 0)
      if logs:
        metrics = jax.device_get(metrics)
        self._check_finite(state, step)
        dt = time.time() - window_t0
        sps = window_steps / dt
        if sps * flops > peak * devices:  # the achieved rate bounds the peak
          log(f"note: {sps * flops / devices / 1e9:.1f} GFLOP/s/device achieved, above "
              f"the peak of {peak / 1e9:.1f}: MFU now counts against the achieved rate")
          peak = sps * flops / devices
        # The parameters' norm, here rather than in the step: a pass over
        # every parameter that only logging steps need.
        metrics["param_norm"] = float(param_norm(state["params"]))
        scalars = {f"train/{k}": v for k, v in metrics.items()}
        scalars.update({
            "train/steps_per_sec": sps,
            f"train/{exp.item_name}_per_sec": sps * items_per_step,
            "train/mfu": sps * flops / (peak * devices),
            "time/wall_sec": time.time() - t_start})
        line = progress.line(step, float(metrics["loss"]))
        if step == first_step:  # one step is no rate: say what it cost instead
          scalars["time/first_step_sec"] = time.time() - t_start
          scalars["model/params"] = param_count(state["params"])
          progress.start(step)
          line += f" | compiled in {compile_sec:.1f}s, first step {dt:.2f}s"
        else:
          line += (f" | {sps * items_per_step:,.0f} {exp.item_name}/s"
                   f" | MFU {100 * scalars['train/mfu']:.1f}%")
        self.writer.write_scalars(step, scalars)
        log(line)
        window_t0, window_steps = time.time(), 0
      if config.eval_every and (step % config.eval_every == 0
                                or step == config.total_steps):
        self._check_finite(state, step)  # no evaluation of a broken state
        self.evaluate(state, step)
        window_t0, window_steps = time.time(), 0  # rates exclude evals
      # Across hosts the stop flag is an all-gather, a sync of every host:
      # made only at steps that log or save, which sync anyway.
      stop = self._stop_requested_everywhere(agree=logs or saves)
      if stop or saves:
        self._check_finite(state, step)
        self.ckpt.save(step, state, data, force=True)
      if stop:
        log(f"stopped by signal at step {step}; checkpoint saved. Rerun the "
            "same command to resume.")
        break
      if step < config.total_steps:
        batch = data.next()
    self.ckpt.close()
    if jax.process_index() == 0:
      viz.plot_curves(self.writer, step)
    self.writer.close()
    return state

  def evaluate(self, state, step):
    t0 = time.time()
    results = self.exp.evaluate(state, self.mesh, step, self.writer)
    self.writer.write_scalars(step, results)
    log(f"eval at step {step}: " + ", ".join(
        f"{k} {v:.4f}" for k, v in results.items()) +
        f" ({time.time() - t0:.1f}s)")
    return results

  def finish(self, state):
    """The test split, read once after training: written as test/... rows
    in metrics.jsonl and workdir/test.json."""
    t0, step = time.time(), int(state["step"])
    results = self.exp.finish(state, self.mesh, self.writer) or {}
    if not results:  # an objective with nothing to report on test
      self.writer.close()
      return results
    self.writer.write_scalars(step, results)
    self.writer.close()
    if jax.process_index() == 0:
      storage.write_atomic(storage.path(self.workdir) / "test.json", json.dumps(
          {"step": step, "split": self.config.data.test_split, **results}, indent=1))
    log(f"test ({self.config.data.test_split} split) at step {step}: " + ", ".join(
        f"{k} {v:.4f}" for k, v in results.items()) + f" ({time.time() - t0:.1f}s)")
    return results

  def _check_finite(self, state, step):
    bad = int(state["bad_step"])
    if bad >= 0:
      self.ckpt.wait()
      raise NonFiniteError(
          f"loss or gradient became NaN/Inf at step {bad + 1}; training "
          f"stopped at step {step}, the last good checkpoint is "
          f"{self.ckpt.steps()[-1] if self.ckpt.steps() else 'none'}. Lower "
          "--config.optim.lr or set --config.optim.clip_norm.")

  # --- signals -----------------------------------------------------------
  def _install_signal_handlers(self):
    def handler(signum, frame):
      del frame
      log(f"received signal {signum}; saving after this step")
      self._stop_requested = True
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)

  def _stop_requested_everywhere(self, agree=True):
    """A signal on any host stops every host at the same step. One host
    reads its own flag each step; many agree on theirs only where `agree`
    (the steps that log or save), so a preempted pod stops within
    log_every steps."""
    if jax.process_count() == 1:
      return self._stop_requested
    if not agree:
      return False
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.int32(self._stop_requested))
    return bool(np.any(flags))


param_norm = jax.jit(optax.tree.norm)


@contextlib.contextmanager
def abstract_step(module, config, devices=None):
  """(trainer, experiment, jitted train step, its abstract arguments) of a
  validated config, for `devices` (default this machine's) without data or
  memory: what `compile` lowers, and what benchmarks compare with a peer's
  step."""
  exp = module.Experiment(config, None, read_data=False)  # shapes only
  with tempfile.TemporaryDirectory() as workdir:
    trainer = Trainer(config, exp, workdir, devices)
    abstract, shardings = trainer.abstract_state()
    batch = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                       sharding=sharding_lib.batch_sharding(trainer.mesh)),
        exp.abstract_batch(config.batch_size))
    step = jax.jit(trainer.step_fn(), donate_argnums=(0,),
                   out_shardings=(shardings, sharding_lib.replicated(trainer.mesh)))
    try:
      yield trainer, exp, step, (abstract, batch)
    finally:
      trainer.writer.close()


def param_count(params):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def write_config(config, workdir):
  if jax.process_index() == 0:
    storage.write_atomic(storage.path(workdir) / "config.json",
                         config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
