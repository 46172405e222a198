"""Config arguments, loading and validation.

Configs are `configs/<family>.py` files with `get_config(arg)`; `arg` is the
text after the colon in `configs/charlm.py:cell=gru,size=small`. Everything a
run needs is checked here, before anything is compiled, and every problem is
reported as one line that names the key and says how to fix it.
"""
import ast
import re

import ml_collections

from attnlab import storage


# The default `optim.wd_mults`: as in the BERT and ViT recipes, no weight
# decay on biases and normalisation scales.
NO_DECAY = (("(.*/)?(bias|scale)", 0.0),)


class ConfigError(ValueError):
  """A bad config value; str() is the one line shown to the user."""

  def __init__(self, key, problem=None, fix=None):
    # absl re-creates errors raised while parsing a flag from the message.
    super().__init__(key if problem is None else
                     f"config.{key}: {problem}; {fix}")
    self.key = key


def parse_variant(arg, variants, default):
  """`VARIANT[,key=value,...]` -> (variant, the rest); the variant may be
  left out (`key=value,...` alone picks `default`)."""
  variant, _, rest = (arg or default).partition(",")
  if "=" in variant:
    variant, rest = default, arg
  if variant not in variants:
    raise ConfigError("arg", f"unknown variant {variant!r}", f"use one of {sorted(variants)}")
  return variant, rest


def parse_arg(arg, **defaults):
  """Parses `key=value,...` into a ConfigDict typed like `defaults`.

  Values are read as Python literals when possible (`n=3`, `lr=1e-3`,
  `flag=True`), else as strings (`cell=gru`).
  """
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep:
      raise ConfigError(f"arg.{key}", f"'{item}' has no value",
                        "write config args as key=value,key=value")
    if key not in defaults:
      raise ConfigError(f"arg.{key}", "unknown config arg",
                        f"use one of {sorted(defaults)}")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    want = type(defaults[key])
    if want is str:  # variant=50 is the string "50"
      value = text
    if want is float and isinstance(value, int) and not isinstance(value, bool):
      value = float(value)
    if not isinstance(value, want):
      raise ConfigError(f"arg.{key}", f"got {text!r}, expected {want.__name__}",
                        f"e.g. {key}={defaults[key]!r}")
    out[key] = value
  return out


def _before_versions(config):
  """Runs written before config.version: the keys added since back-filled
  with what those runs did."""
  if "data" in config and "test_split" not in config.data:
    config.data.test_split = "test"
  if "optim" in config and "wd_mults" not in config.optim:
    # Before per-parameter rules: weight decay on every parameter.
    config.optim.update(dict(lr_mults=(), wd_mults=(), frozen=(),
                             wd_schedule="constant", weight_decay_end=0.0))
  if "optim" in config and "mu_dtype" not in config.optim:
    config.optim.mu_dtype = "float32"
  for key, value in (("gather_params", False), ("mesh_subset", False),
                     ("prng_impl", "threefry2x32")):
    if key not in config:
      config[key] = value
  if "model" in config and "d_model" in config.model and "scan" not in config.model:
    # Before the layer stack had options: unscanned, no remat.
    config.model.update(dict(scan=False, remat="none"))
  if config.get("model", {}).get("name") == "vit" and "drop_path" not in config.model:
    config.model.update(drop_path=0.0, head_bias=0.0)
  decode = config.get("decode", {})
  if "batch" in decode and "batch_tokens" not in decode:
    # Before translation batches were sized by tokens: the same 64
    # sentences at the shortest padded length (32 source tokens).
    config.decode.batch_tokens = 32 * config.decode.batch
    del config.decode["batch"]


# Each change to what a run's config.json holds is one step here, in order;
# config.version is how many of them a run has seen (0: written before
# versions). A change that adds a key appends a step that back-fills it with
# the behaviour old runs had, so they resume and evaluate as they were.
UPGRADES = (_before_versions,)
VERSION = len(UPGRADES)


def upgrade(config):
  """A run's saved config brought to this code's VERSION (in place)."""
  for step in UPGRADES[config.get("version", 0):]:
    step(config)
  config.version = VERSION
  return config


def common(experiment, total_steps, batch_size, log_every, eval_every,
           ckpt_every, optim):
  """The keys every config has (docs/design.md), with the usual defaults."""
  c = ml_collections.ConfigDict()
  c.experiment = experiment
  c.version = VERSION  # of the run format: `upgrade` brings older runs to it
  c.seed = 0
  # The random-bit generator: "rbg" makes dropout's bits faster (1.09x a
  # Transformer step here, more on TPUs) but other numbers than threefry.
  c.prng_impl = "threefry2x32"
  c.total_steps = total_steps
  c.batch_size = batch_size  # global, over all devices and hosts
  c.grad_accum = 1
  c.log_every = log_every
  c.eval_every = eval_every
  # Also evaluate a new run's initial state, before its first step: the
  # untrained starting point of every curve (e.g. a random network's k-NN).
  c.eval_at_start = False
  c.ckpt_every = ckpt_every
  c.keep_ckpts = 3
  c.mesh = (("data", -1),)
  # A mesh smaller than the machine (its first devices) only when asked:
  # comparisons of 1 and 8 devices in one process. Otherwise the sizes must
  # multiply to the device count (a typo would silently idle chips).
  c.mesh_subset = False
  c.param_sharding = ()  # (regex, PartitionSpec tuple) rules; replicated
  # ZeRO-3 with one gather per step: parameters (and so their optimizer
  # state) stay split as param_sharding says, each step gathers them whole,
  # kernels already cast to model.dtype (the cast every Dense and Conv
  # makes anyway: bfloat16 gathers half the bytes), and the forward and
  # backward pass run as data parallelism does; their gradients come back
  # split, so each chip updates only its share. With the FSDP rule
  # `(".*", ("data",))` it takes the optimizer's update off the step.
  c.gather_params = False
  c.peak_flops = 0.0  # per device; 0 measures a matmul at start-up
  # Read data.test_split once when training ends. A tuning try sets it False
  # (choose on validation; read test later with `eval --split test`).
  c.final_test = True
  # Global batches put on the devices ahead of the step that uses them,
  # fetched as soon as a step is dispatched (before the host waits for its
  # metrics); 0 fetches each batch only when its step is due.
  c.device_put_ahead = 1
  c.optim = ml_collections.ConfigDict(dict(
      name="adam", schedule="cosine", b1=0.9, b2=0.999, eps=1e-8,
      weight_decay=0.0, wd_schedule="constant", weight_decay_end=0.0,
      # per-parameter rules (attnlab/optim.py): ((regex, multiplier), ...)
      lr_mults=(), wd_mults=NO_DECAY, frozen=(),
      # The dtype of Adam's first moment (SGD's momentum): bfloat16 halves
      # it, as big_vision's recipes keep it; the second moment and the
      # parameters stay float32.
      mu_dtype="float32"))
  c.optim.update(optim)
  # A short run (steps=N) warms up for at most a quarter of its steps, so
  # its learning rate always peaks and decays.
  c.optim.warmup_steps = min(c.optim.get("warmup_steps", 0), total_steps // 4)
  return c


# Embedding tables split by columns for the pods: split by rows (the
# vocabulary), the gradient's scatter-add was partitioned into 98 gathers
# of WMT's whole table (the TPU compiler's program); a vocabulary the slice
# does not divide (GPT-2's 50,257) would stay whole.
EMBEDDINGS_BY_COLUMNS = ((".*embedding", (None, "data")),)


def for_pods(c, rules=(), split=True):
  """What the pod recipes set: bfloat16 compute over float32 parameters and
  optimizer state (docs/pods.md, "Mixed precision"), and with `split` ZeRO-3 with
  one gather per step (`gather_params`): parameters and their optimizer
  state split over the batch axis (`rules` first), gathered whole in
  bfloat16 at the start of each step, each chip updating only its share.
  Recipes whose program the TPU compiler made slower that way (a layer
  applied in a loop or once per crop: the compiler gathered its parameters
  at each application) stay data parallel: `split=False`."""
  c.model.dtype = "bfloat16"
  c.param_sharding = (tuple(rules) + ((".*", ("data",)),)) if split else ()
  c.gather_params = split
  return c


def check(ok, key, problem, fix):
  if not ok:
    raise ConfigError(key, problem, fix)


def check_choice(config, key, choices):
  value = config
  for part in key.split("."):
    value = value[part]
  check(value in choices, key, f"{value!r} is not one of {sorted(choices)}",
        f"set --config.{key} to one of them")


def validate_common(config, device_count):
  """Checks the keys every experiment shares (docs/design.md)."""
  for key in ("seed", "total_steps", "batch_size", "log_every", "eval_every",
              "ckpt_every", "keep_ckpts", "grad_accum"):
    check(key in config, key, "missing", "every config must define it")
    check(isinstance(config[key], int), key,
          f"{config[key]!r} is not an integer", f"set --config.{key}=<int>")
  for key in ("total_steps", "batch_size", "log_every", "keep_ckpts",
              "grad_accum"):
    check(config[key] > 0, key, f"{config[key]} must be > 0",
          f"set --config.{key} to a positive integer")
  for key in ("eval_every", "ckpt_every"):
    check(config[key] >= 0, key, f"{config[key]} must be >= 0",
          f"set --config.{key}=0 to disable it, or a positive step count")
  check(config.optim.lr > 0, "optim.lr", f"{config.optim.lr} must be > 0",
        "set --config.optim.lr to a positive number, e.g. 1e-3")
  check(config.optim.warmup_steps >= 0, "optim.warmup_steps",
        "must be >= 0", "set --config.optim.warmup_steps=0 for no warm-up")
  check(config.optim.warmup_steps < config.total_steps, "optim.warmup_steps",
        f"{config.optim.warmup_steps} is not below total_steps={config.total_steps}: "
        "the learning rate would still be rising when training ends",
        f"set --config.optim.warmup_steps below {config.total_steps}, e.g. "
        f"{config.total_steps // 10}")
  check(config.optim.get("mu_dtype", "float32") in ("float32", "bfloat16"), "optim.mu_dtype",
        f"{config.optim.get('mu_dtype')!r} is not float32 or bfloat16",
        "set --config.optim.mu_dtype=bfloat16 (half the first moment's memory) or float32")
  check(config.optim.clip_norm >= 0, "optim.clip_norm", "must be >= 0",
        "set --config.optim.clip_norm=0 to disable clipping")
  check(config.optim.weight_decay >= 0, "optim.weight_decay", "must be >= 0",
        "set --config.optim.weight_decay=0 for none")
  check_choice(config, "optim.name", {"adam", "adamw", "sgd"})
  check_choice(config, "prng_impl", {"threefry2x32", "rbg", "unsafe_rbg"})
  check_choice(config, "optim.wd_schedule", {"constant", "cosine"})
  check(config.optim.weight_decay_end >= 0, "optim.weight_decay_end", "must be >= 0",
        "set it to the weight decay the cosine schedule ends at")
  for key, pairs in (("lr_mults", True), ("wd_mults", True), ("frozen", False)):
    for rule in config.optim[key]:
      pattern = rule[0] if pairs and isinstance(rule, (tuple, list)) else rule
      shaped = (isinstance(rule, (tuple, list)) and len(rule) == 2
                and isinstance(rule[1], (int, float)) and rule[1] >= 0) if pairs else True
      example = '\'(("head/.*", 10.0),)\'' if pairs else '\'("embed/.*",)\''
      check(shaped and isinstance(pattern, str), f"optim.{key}",
            f"{rule!r} is not a {'(regex, multiplier >= 0) pair' if pairs else 'regex'}",
            f"e.g. --config.optim.{key}={example}")
      try:
        re.compile(pattern)
      except re.error as e:
        raise ConfigError(f"optim.{key}", f"bad regex {pattern!r}: {e}",
                          "fix the regular expression") from None
  check_choice(config, "optim.schedule",
               {"constant", "cosine", "linear", "rsqrt"})
  mesh_devices = mesh_size(config, device_count)
  ways = batch_ways(config, mesh_devices)
  per_step = ways * config.grad_accum
  check(config.batch_size % per_step == 0, "batch_size",
        f"global batch {config.batch_size} is not divisible by "
        f"{ways} devices x {config.grad_accum} accumulation steps",
        f"use a multiple of {per_step}")
  check(config.peak_flops >= 0, "peak_flops", "must be >= 0",
        "set it to the device's peak FLOP/s, or 0 to measure a matmul")


def mesh_size(config, device_count):
  """Number of devices `config.mesh` uses; -1 means all that are left."""
  sizes = [size for _, size in config.mesh]
  check(all(isinstance(s, int) and (s > 0 or s == -1) for s in sizes)
        and sizes.count(-1) <= 1 and len(sizes) > 0, "mesh",
        f"{config.mesh!r} needs (axis, size) pairs with sizes > 0 or one -1",
        "e.g. --config.mesh='((\"data\", -1),)'")
  fixed = 1
  for s in sizes:
    fixed *= s if s > 0 else 1
  check(device_count % fixed == 0, "mesh",
        f"{config.mesh!r} needs a multiple of {fixed} devices, "
        f"{device_count} are available", "change the mesh sizes")
  check(-1 in sizes or fixed == device_count or config.get("mesh_subset", False), "mesh",
        f"{config.mesh!r} multiplies to {fixed} devices, {device_count} are available",
        f"make the sizes multiply to {device_count}, give one axis -1 (the rest), or set "
        f"--config.mesh_subset=True to use only the first {fixed}")
  return device_count if -1 in sizes else fixed


def batch_ways(config, mesh_devices):
  """How many ways the mesh splits the batch: its data and fsdp axes
  (attnlab/sharding.py); a model axis' devices share their rows."""
  names = [name for name, _ in config.mesh]
  check("data" in names, "mesh", f"{config.mesh!r} has no data axis",
        "name the axis that splits the batch data, e.g. (('data', -1), ('model', 2))")
  check(len(set(names)) == len(names), "mesh", f"{config.mesh!r} names an axis twice",
        "give each axis once")
  fixed = 1
  for _, size in config.mesh:
    fixed *= max(size, 1)
  ways = 1
  for name, size in config.mesh:
    if name in ("data", "fsdp"):  # sharding.BATCH_AXES (config imports no jax)
      ways *= mesh_devices // fixed if size == -1 else size
  return ways


def check_served(path, key="workdir", here=True):
  """A one-line error for a path (workdir, data folder) whose storage scheme
  nothing installed serves, before anything compiles; here=False: read on
  other machines (a pod's workers), only the scheme's name is checked."""
  problem = storage.unserved(path, "--workdir" if key == "workdir" else f"--config.{key}",
                             here)
  if problem:
    raise ConfigError(key, *problem)


def check_folder(key, folder, pattern_desc):
  check_served(folder, key)
  check(storage.path(folder).is_dir(), key, f"folder {folder!r} does not exist",
        f"point --config.{key} at a folder of {pattern_desc}")
