"""Checkpoints: orbax `CheckpointManager` over the train state and the data
iterator, saved asynchronously, keeping the newest `keep_ckpts`.

A checkpoint that cannot be read (a killed copy, a truncated file) is moved
to `workdir/corrupt_checkpoints/` with a warning and the previous one is
used: nothing is deleted and nothing silently restarts from scratch. Orbax
only detects damage to the files a restore happens to read, so each finished
checkpoint is sealed with the size of every file it holds, checked before
restoring.
"""
import json

from absl import logging
import grain
import jax
import orbax.checkpoint as ocp

from attnlab import storage


MANIFEST = "attnlab_manifest.json"


class MismatchError(ValueError):
  """An intact checkpoint whose tree is not the one this config builds."""


class Checkpointer:

  def __init__(self, workdir, keep, async_save=True):
    self.directory = storage.absolute(workdir) / "checkpoints"
    self.corrupt_dir = storage.absolute(workdir) / "corrupt_checkpoints"
    self._keep, self._async = keep, async_save
    self._manager = self._make_manager()

  def _make_manager(self):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=self._keep, create=True,
        enable_async_checkpointing=self._async)
    return ocp.CheckpointManager(self.directory, options=options,
                                 item_names=("state", "data"))

  def steps(self):
    return sorted(self._manager.all_steps())

  def save(self, step, state, data_iter, force=False):
    items = {"state": ocp.args.StandardSave(state)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iter)
    saved = self._manager.save(step, args=ocp.args.Composite(**items),
                               force=force)
    # orbax finishes the previous async save before starting this one.
    self._seal(below=step)
    return saved

  def _seal(self, below=None):
    """Writes `MANIFEST` (file -> size) into each finished checkpoint."""
    if jax.process_index() != 0:
      return
    for step in self.steps():
      folder = self.directory / str(step)
      path = folder / MANIFEST
      if (below is not None and step >= below) or path.exists():
        continue
      sizes = {str((d / f).relative_to(folder)): (d / f).stat().length
               for d, _, files in storage.walk(folder) for f in files}
      storage.write_atomic(path, json.dumps(sizes, indent=0, sort_keys=True))

  def _verify(self, step):
    path = self.directory / str(step) / MANIFEST
    if not path.exists():
      return  # killed before sealing: orbax's own commit marker must do
    sizes = json.loads(path.read_text())
    for name, size in sizes.items():
      full = self.directory / str(step) / name
      actual = full.stat().length if full.exists() else None
      if actual != size:
        raise IOError(f"{name} has {actual} bytes, {size} were written")

  def restore_newest(self, abstract_state, data_iter):
    """Restores the newest readable checkpoint; returns the state or None.

    `abstract_state` is a tree of `jax.ShapeDtypeStruct` with shardings, so
    arrays come back already sharded on this mesh.
    """
    for step in reversed(self.steps()):
      try:
        return self.restore(step, abstract_state, data_iter)
      except MismatchError:
        raise  # intact, but of another model: never set aside
      except Exception as e:  # orbax/tensorstore raise many types
        self._set_aside(step, e)
    return None

  def restore(self, step, abstract_state, data_iter=None):
    self._verify(step)
    # Parts of the state added since a checkpoint was written (model_state)
    # are not on disk: restored as the empty trees they are in such runs.
    on_disk = set(ocp.PyTreeCheckpointHandler().metadata(
        self.directory / str(step) / "state").tree)
    added = {k: v for k, v in abstract_state.items()
             if k not in on_disk and not jax.tree.leaves(v)}
    target = {k: v for k, v in abstract_state.items() if k not in added}
    items = {"state": ocp.args.StandardRestore(target)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    try:
      state = self._manager.restore(step, args=ocp.args.Composite(**items)).state
    except ValueError as e:
      if "structure" not in str(e):
        raise
      raise MismatchError(
          f"checkpoint {step} in {self.directory} holds a state of another shape "
          f"than this config builds ({str(e).splitlines()[0]}): it was written by "
          "another model or optimizer configuration; use its config.json, or a new "
          "--workdir") from None
    return {**state, **added}

  def _set_aside(self, step, error):
    reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
    logging.warning("checkpoint %d is unreadable (%s); moving it to %s and "
                    "trying the previous one", step, reason, self.corrupt_dir)
    print(f"WARNING: checkpoint {step} is unreadable ({reason}); using the "
          "previous one", flush=True)
    self._manager.close()
    if jax.process_index() == 0:
      self.corrupt_dir.mkdir(parents=True, exist_ok=True)
      target = self.corrupt_dir / str(step)
      if target.exists():
        target.rmtree()
      (self.directory / str(step)).rename(target)
    sync("attnlab_ckpt_aside")
    self._manager = self._make_manager()

  def wait(self):
    self._manager.wait_until_finished()
    self._seal()

  def close(self):
    self.wait()
    self._manager.close()


def sync(name):
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def load_variables(workdir):
  """(params, model_state) of the newest checkpoint of another run (to
  fine-tune from it), on this process's first device, whatever mesh saved
  them; model_state is {} for runs without one (or made before it existed).
  Read-only: that run's folder is not touched."""
  steps = checkpoint_steps(workdir)
  if not steps:
    raise FileNotFoundError(f"{workdir} has no checkpoint: train it first")
  path = storage.absolute(workdir) / "checkpoints" / str(steps[-1]) / "state"
  meta = ocp.PyTreeCheckpointHandler().metadata(path).tree
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        meta)
  with ocp.StandardCheckpointer() as ckptr:
    state = ckptr.restore(path, target)
  return state["params"], state.get("model_state", {})


def checkpoint_steps(workdir):
  """The steps of workdir/checkpoints/ (without opening a manager)."""
  folder = storage.path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) \
      if folder.is_dir() else []


def write_average(states, out):
  """Checkpoint averaging (Vaswani et al. 2017, section 6.1: the last 5
  checkpoints for base, 20 for big): the mean of `states`' float params and
  model_state (BatchNorm statistics: a mean of running means) saved as the
  one checkpoint of the run in `out`; the rest (step, optimizer state) is
  the last state's."""
  import jax.numpy as jnp

  def mean(key):  # of float leaves; counters are the last state's
    one = lambda *xs: ((sum(xs) / len(xs)).astype(xs[-1].dtype)
                       if jnp.issubdtype(xs[-1].dtype, jnp.floating) else xs[-1])
    return jax.tree.map(one, *[s[key] for s in states])
  state = dict(states[-1], params=mean("params"), model_state=mean("model_state"))
  ckpt = Checkpointer(out, keep=1, async_save=False)
  ckpt.save(int(state["step"]), state, None, force=True)
  ckpt.close()
