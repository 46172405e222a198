"""TPU slices, checked by the TPU compiler on a machine that has no TPU.

libtpu (the version jax's `tpu` extra pins) compiles for a TPU topology
without the chips: `jax.experimental.topologies` gives a slice's abstract
devices, a mesh is built on them and the train step is lowered with
`ShapeDtypeStruct`s and compiled by the TPU compiler itself, as MaxText's
train_compile does. What that gives, per chip: HBM (`memory_analysis`),
FLOPs (`cost_analysis`) and, in the compiled HLO, the compiler's estimate of
each operation's cycles (`"estimated_cycles"` in the backend config), from
which `estimate` makes a step time.

  SLICES: the names a user books (v4-N and v5p-N count TensorCores,
  v5e-N / v5litepod-N and v6e-N count chips) or an explicit topology
  (v5e:4x8, v4:2x2x4).

libtpu is installed on first use into `.venv/libtpu` (its own folder, on no
import path: a CPU run never loads it) and handed to JAX through
TPU_LIBRARY_PATH (ATTNLAB_LIBTPU=FOLDER: install it there instead).
"""
import dataclasses
import importlib.metadata
import math
import os
import re
import subprocess
import sys
import tempfile


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU generation, from Google's published specifications.

  clock_ghz is derived, not published: the bf16 peak divided by the MXUs'
  multiply-adds per cycle (v4, v5p: 2 TensorCores x 4 MXUs of 128 x 128;
  v5e: 4 of 128 x 128; v6e: 4 x (256 x 256) / 4, the 4.7x of v5e Google
  gives for Trillium). It turns the compiler's cycles into seconds; the
  compiler's own estimate for a large bf16 matmul is 88-90% of that peak
  (70% on v6e), so the clocks are consistent with its cycle counts.
  allreduce_gbs: a pod's published all-reduce bandwidth over its chips
  (v5p: half its bidirectional ICI, the ratio of v5e's and v6e's figures).
  """
  name: str
  device_kind: str        # jax's device_kind of the abstract devices
  topology: str           # prefix of libtpu's topology names
  hbm_gib: float
  hbm_gbs: float          # HBM bandwidth, GB/s
  peak_bf16: float        # FLOP/s per chip
  clock_ghz: float
  allreduce_gbs: float    # per chip, GB/s over ICI
  dcn_gbs: float          # per chip, GB/s between slices
  cores_in_name: bool     # v4-8 is 8 TensorCores = 4 chips
  dims: int               # 2D or 3D torus
  max_chips: int
  runtime: str            # the TPU VM software version gcloud creates it with


CHIPS = {
    "v4": Chip("v4", "TPU v4", "v4", 32, 1200, 275e12, 1.05, 268, 6.25, True, 3, 4096,
                "tpu-ubuntu2204-base"),
    "v5e": Chip("v5e", "TPU v5 lite", "v5e", 16, 819, 197e12, 1.5, 200, 3.125, False, 2, 256,
                 "v2-alpha-tpuv5-lite"),
    "v5p": Chip("v5p", "TPU v5", "v5", 95, 2765, 459e12, 1.75, 600, 6.25, True, 3, 4096,
                 "v2-alpha-tpuv5"),
    "v6e": Chip("v6e", "TPU v6 lite", "v6e", 32, 1638, 918e12, 1.75, 400, 3.125, False, 2, 256,
                 "v2-alpha-tpuv6e"),
}
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v5": "v5p", "v6": "v6e"}


def _known():
  """The names parse_slice takes, for error messages."""
  def n(chip, chips):
    return f"{chip.name}-{chips * (2 if chip.cores_in_name else 1)}"
  return ", ".join(f"{n(c, 4 if c.dims == 3 else 1)} ... {n(c, c.max_chips)}"
                   for c in CHIPS.values()) + " (v5litepod-N = v5e-N), or a topology such as v5e:4x8"


class SliceError(ValueError):
  """A slice name or request that cannot be compiled for; str() is one line."""


@dataclasses.dataclass(frozen=True)
class Slice:
  chip: Chip
  shape: tuple            # chips along each axis of the torus
  slices: int = 1         # over DCN (multi-slice)

  @property
  def chips(self):
    return math.prod(self.shape) * self.slices

  @property
  def topology_name(self):
    return f"{self.chip.topology}:{'x'.join(map(str, self.shape))}"

  @property
  def name(self):
    n = math.prod(self.shape) * (2 if self.chip.cores_in_name else 1)
    one = f"{self.chip.name}-{n}"
    return one if self.slices == 1 else f"{self.slices} x {one}"


def _shape_3d(chips):
  """The cube shapes Cloud TPU gives v4/v5p slices of 2^k chips: 2x2x1,
  2x2x2, 2x2x4, 2x4x4, 4x4x4, 4x4x8, 4x8x8, 8x8x8, ... (double the last of
  the smallest sides)."""
  shape = [2, 2, 1]
  while math.prod(shape) < chips:
    smallest = min(shape)
    i = max(j for j, s in enumerate(shape) if s == smallest)
    shape[i] *= 2
  return tuple(shape)


def _shape_2d(chips):
  """v5e/v6e: 1x1, 2x2, 2x4, 4x4, 4x8, 8x8, 8x16, 16x16."""
  if chips == 1:
    return (1, 1)
  shape = [2, 2]
  while math.prod(shape) < chips:
    shape[1 if shape[0] == shape[1] else 0] *= 2
  return tuple(shape)


def parse_slice(name, slices=1):
  """`v5e-256`, `v5litepod-16`, `v4-32`, `v5p-128`, `v6e-64`, or a topology
  `v5e:16x16` -> Slice. Raises SliceError (one line) for anything else."""
  if slices < 1:
    raise SliceError(f"--slices {slices}: give 1 or more slices")
  text = name.strip().lower()
  m = re.fullmatch(r"(v\w+?):(\d+(?:x\d+)+)", text)
  if m:
    chip = CHIPS.get(ALIASES.get(m.group(1), m.group(1)))
    shape = tuple(int(s) for s in m.group(2).split("x"))
    if chip is None or len(shape) != chip.dims or math.prod(shape) > chip.max_chips \
        or min(shape) < 1:
      raise SliceError(f"--tpu {name}: not a TPU topology; use one of {_known()}")
    return Slice(chip, shape, slices)
  m = re.fullmatch(r"(v\w+?)-(\d+)", text)
  chip = m and CHIPS.get(ALIASES.get(m.group(1), m.group(1)))
  if not chip:
    raise SliceError(f"--tpu {name}: unknown TPU slice; use one of {_known()}")
  n = int(m.group(2))
  chips = n // 2 if chip.cores_in_name else n
  smallest = 4 if chip.dims == 3 else 1
  if (chip.cores_in_name and n % 2) or chips < smallest or chips > chip.max_chips \
      or chips & (chips - 1):
    raise SliceError(
        f"--tpu {name}: {chip.name} slices are named by "
        f"{'TensorCores (2 per chip)' if chip.cores_in_name else 'chips'} in powers of two "
        f"from {chip.name}-{smallest * (2 if chip.cores_in_name else 1)} to "
        f"{chip.name}-{chip.max_chips * (2 if chip.cores_in_name else 1)}; give such a "
        f"name, or a topology such as {chip.topology}:{'x'.join(['2'] * chip.dims)}")
  return Slice(chip, (_shape_3d if chip.dims == 3 else _shape_2d)(chips), slices)


# --- libtpu ------------------------------------------------------------------
def libtpu_requirement():
  """The libtpu version jax's `tpu` extra pins (`libtpu==0.0.42.*`)."""
  for req in importlib.metadata.requires("jax") or ():
    spec, _, marker = req.partition(";")
    if spec.strip().startswith("libtpu") and "tpu" in marker:
      return spec.replace(" ", "")
  return "libtpu"


def libtpu_folder():
  """.venv/libtpu, or the folder ATTNLAB_LIBTPU names (one libtpu shared by
  several checkouts)."""
  return os.environ.get("ATTNLAB_LIBTPU") or os.path.join(sys.prefix, "libtpu")


def _installed_version(folder):
  for entry in os.listdir(folder) if os.path.isdir(folder) else ():
    m = re.fullmatch(r"libtpu-(.+)\.dist-info", entry)
    if m:
      return m.group(1)
  return None


def _satisfies(version, requirement):
  pin = requirement.partition("==")[2]
  if not pin:
    return version is not None
  return version is not None and (version.startswith(pin[:-1]) if pin.endswith("*")
                                  else version == pin)


def ensure_libtpu(say=print):
  """Path of libtpu.so, installing the pinned libtpu into .venv/libtpu first
  if it is not there (about 200 MB once). SliceError if pip cannot."""
  folder, requirement = libtpu_folder(), libtpu_requirement()
  library = os.path.join(folder, "libtpu", "libtpu.so")
  if _satisfies(_installed_version(folder), requirement) and os.path.isfile(library):
    return library
  by_hand = (f"install it by hand: {sys.executable} -m pip install --no-deps --target "
             f"{folder} '{requirement}'")
  say(f"installing {requirement} (the TPU compiler, pinned by jax's tpu extra) into "
      f"{folder}, once")
  os.makedirs(os.path.dirname(folder), exist_ok=True)
  # Into a fresh folder, then renamed: two processes installing at once
  # (parallel tests) never see half a library.
  staging = tempfile.mkdtemp(prefix=".libtpu-", dir=os.path.dirname(folder))
  p = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                      "--target", staging, requirement], capture_output=True, text=True)
  if p.returncode != 0 or not os.path.isfile(os.path.join(staging, "libtpu", "libtpu.so")):
    why = (p.stderr.strip().splitlines() or ["no libtpu.so in the wheel"])[-1]
    subprocess.run(["rm", "-rf", staging])
    raise SliceError(f"libtpu could not be installed ({why}); {by_hand}")
  if _satisfies(_installed_version(folder), requirement):
    subprocess.run(["rm", "-rf", staging])  # another process finished first
  else:
    if os.path.isdir(folder):
      os.rename(folder, staging + ".old")
    os.rename(staging, folder)
    subprocess.run(["rm", "-rf", staging + ".old"])
  return library


def abstract_chips(tpu_slice, say=print):
  """The slice's abstract devices, libtpu installed first if need be (call
  with JAX_PLATFORMS=cpu set before JAX starts: no chip is opened)."""
  # No chip is opened, so several compiles (parallel tests) may load libtpu
  # at once without its one-process-per-TPU lock.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  os.environ["TPU_LIBRARY_PATH"] = ensure_libtpu(say)
  return devices(tpu_slice)


def devices(tpu_slice):
  """The slice's abstract devices (one per chip; megacore chips are one
  device). Needs TPU_LIBRARY_PATH (`abstract_chips` sets it)."""
  from jax.experimental import topologies
  chip = tpu_slice.chip
  shape = tpu_slice.shape + (1,) * (3 - len(tpu_slice.shape))
  kwargs = dict(chips_per_host_bounds=tuple(min(s, 2) for s in shape[:2]) + (1,),
                num_slices=tpu_slice.slices)
  if chip.cores_in_name:
    kwargs["chip_config_name"] = "megacore"
  # The links wrap around (a torus) along the sides of a whole pod (2D:
  # 16) or of whole cubes (3D: slices of 64 chips and more).
  if chip.dims == 2:
    kwargs["wrap"] = tuple(s == 16 for s in shape)
  else:
    kwargs["wrap"] = (math.prod(shape) >= 64,) * 3
  with _quiet_stderr():
    try:
      topo = topologies.get_topology_desc(platform="tpu", topology_name=tpu_slice.topology_name,
                                          **kwargs)
    except Exception as e:
      raise SliceError(f"--tpu {tpu_slice.name}: libtpu refused topology "
                       f"{tpu_slice.topology_name}: {' '.join(str(e).split())[:300]}") from None
  return list(topo.devices)


class _quiet_stderr:
  """libtpu looks for the TPU VM's metadata when it starts and writes
  warnings about not finding it to the process's stderr (file descriptor
  2, from C++): kept out of the report, as there is no TPU VM here."""

  def __enter__(self):
    self.saved = os.dup(2)
    self.file = tempfile.TemporaryFile()
    os.dup2(self.file.fileno(), 2)
    return self.file

  def __exit__(self, *exc):
    os.dup2(self.saved, 2)
    os.close(self.saved)
    self.file.close()
    return False


# --- the compiler's estimate -------------------------------------------------
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute",
               "all-to-all")
_HEADER = re.compile(r"^(ENTRY )?%?([\w.\-]+) ")
_INSTR = re.compile(r"^\s+(?:ROOT )?%?([\w.\-]+) = (.+?) ([a-z][\w\-]*)\(")
_CYCLES = re.compile(r'"estimated_cycles":"(\d+)"')
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "bf16": 2, "f16": 2,
                "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8,
                "u64": 8, "c64": 8}


def _shape_bytes(text):
  """Bytes of an HLO shape (`f32[128,1024]{...}` or a tuple of them)."""
  total = 0
  for dtype, dims in re.findall(r"\b([a-z]+\d*(?:e\dm\d(?:fn)?)?)\[([\d,]*)\]", text):
    if dtype in _DTYPE_BYTES:
      total += _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
  return total


def _group_size(line):
  m = re.search(r"replica_groups=\[(\d+),(\d+)\]", line)  # iota form [groups,size]<=[n]
  if m:
    return int(m.group(2))
  m = re.search(r"replica_groups=\{\{([\d,]*)\}", line)
  if m:
    return len(m.group(1).split(","))
  m = re.search(r"replica_groups=mesh\[([^\]]*)\] \{([^}]*)\}", line)  # named mesh axes
  if m:
    sizes = dict(re.findall(r"'(\w+)'=(\d+)", m.group(1)))
    return math.prod(int(sizes.get(a, 1)) for a in re.findall(r"'(\w+)'", m.group(2)))
  m = re.search(r"source_target_pairs=", line)
  return 2 if m else 1


@dataclasses.dataclass
class Op:
  name: str           # the HLO instruction
  kind: str           # opcode (fusion, copy, all-reduce, ...)
  label: str          # what the program was doing: jax's op_name, shortened
  runs: int           # times per step (loop trip counts multiplied)
  cycles: int = 0     # the compiler's estimate per run
  comm_bytes: int = 0  # a collective's data per chip per run
  group: int = 1      # devices in a collective's group


def _as_collective(op, kind, shape, line):
  """`op` as the collective `kind`: its group and its data per chip per run."""
  op.kind, op.group = kind, _group_size(line)
  op.comm_bytes = _shape_bytes(shape)
  if kind == "reduce-scatter":  # its output is one of `group` shards
    op.comm_bytes *= op.group
  return op


def _computations(hlo):
  comps, entry, name = {}, None, None
  for line in hlo.splitlines():
    if line and not line.startswith((" ", "}")) and line.rstrip().endswith("{"):
      m = _HEADER.match(line)
      name = m.group(2)
      comps[name] = []
      if m.group(1):
        entry = name
    elif name and line.startswith("  "):
      comps[name].append(line)
  return comps, entry


def _trip_count(cond_lines):
  """A scan's `i < N` condition -> N (jax's loops count up from 0); None
  if the loop is not of that form."""
  constants = {}
  for line in cond_lines:
    m = re.match(r"^\s+(?:ROOT )?%?([\w.\-]+) = s32\[\]\S* constant\((-?\d+)\)", line)
    if m:
      constants[m.group(1)] = int(m.group(2))
  for line in cond_lines:
    if line.lstrip().startswith("ROOT") and " compare(" in line and "direction=LT" in line:
      args = re.search(r"compare\(%?([\w.\-]+), %?([\w.\-]+)\)", line)
      if args and args.group(2) in constants:
        return constants[args.group(2)]
  return None


def _label(line):
  """jax's op name of an instruction without its transformation wrappers:
  `jit(step_fn)/transpose(jvp(ViT))/encoder/...` -> `ViT/encoder/...`."""
  m = re.search(r'op_name="([^"]+)"', line)
  if not m:
    return ""
  name = re.sub(r"^jit\([^)]*\)/", "", m.group(1))
  return re.sub(r"\b(transpose|jvp|remat|checkpoint|vmap|pjit|jit)\(|\)", "", name)


def hlo_ops(hlo):
  """The step's operations with the compiler's cycle estimates, each with
  how many times it runs per step: a while loop's body (a scanned layer
  stack, accumulated microbatches) counts its trip count times, found from
  its `i < N` condition; loops of another form count once and are named in
  `unknown_loops`. Of a conditional's branches only the dearest counts.
  Fusions are counted as one operation (their insides
  carry no estimates of their own), but the collectives a fusion holds (an
  async all-gather's start, an all-reduce fused with its slice) count
  as collectives. Also returned: the targets of custom
  calls that carry no estimate (their time is missing from the sum)."""
  comps, entry = _computations(hlo)
  unknown, blind = [], []

  def fused_collectives(name, runs, label, depth=0):
    """The collectives inside fusion computation `name` (an async
    collective's start holds its all-gather; its done holds a copy, not
    counted again)."""
    lines = comps.get(name, ())
    if depth > 4 or any("AsyncCollectiveDone" in l for l in lines if "ROOT" in l):
      return []
    found = []
    for line in lines:
      m = _INSTR.match(line)
      if not m:
        continue
      instr, shape, kind = m.groups()
      if kind in COLLECTIVES:
        found.append(_as_collective(Op(instr, kind, _label(line) or label, runs),
                                    kind, shape, line))
      elif kind == "fusion":
        callee = re.search(r"calls=%?([\w.\-]+)", line)
        found += fused_collectives(callee.group(1) if callee else "", runs, label, depth + 1)
    return found

  def walk(name, runs, depth=0):
    """The operations of computation `name`, run `runs` times."""
    found = []
    for line in comps.get(name, ()):
      m = _INSTR.match(line)
      if not m:
        continue
      instr, shape, kind = m.groups()
      cycles = _CYCLES.search(line)
      op = Op(instr, kind, _label(line), runs, int(cycles.group(1)) if cycles else 0)
      base = kind.removesuffix("-start")
      if base in COLLECTIVES and not kind.endswith("-done"):
        _as_collective(op, base, shape, line)
      if kind == "fusion":  # async collectives and all-reduce fusions hold theirs inside
        callee = re.search(r"calls=%?([\w.\-]+)", line)
        found += fused_collectives(callee.group(1) if callee else "", runs, op.label)
      if op.cycles or op.comm_bytes:
        found.append(op)
      elif kind == "custom-call":  # a Pallas kernel is tpu_custom_call
        target = re.search(r'custom_call_target="([^"]+)"', line)
        blind.append(target.group(1) if target else instr)
      if depth >= 8:
        continue
      if kind == "while":
        body = re.search(r"body=%?([\w.\-]+)", line).group(1)
        cond = re.search(r"condition=%?([\w.\-]+)", line).group(1)
        trips = _trip_count(comps.get(cond, ()))
        if trips is None:
          unknown.append(op.label or instr)
        found += walk(body, runs * (trips or 1), depth + 1)
      elif kind == "conditional":  # one branch runs: the dearest one counts
        branches = re.search(r"branch_computations=\{([^}]*)\}", line)
        names = (re.findall(r"%?([\w.\-]+)", branches.group(1)) if branches else
                 re.findall(r"(?:true|false)_computation=%?([\w.\-]+)", line))
        costs = [walk(b, runs, depth + 1) for b in names]
        found += max(costs, key=lambda ops_: sum(o.cycles * o.runs for o in ops_), default=[])
      elif kind in ("call", "async-start"):
        callee = re.search(r"(?:to_apply|calls)=%?([\w.\-]+)", line)
        if callee:
          found += walk(callee.group(1), runs, depth + 1)
    return found
  ops = walk(entry, 1)
  return ops, unknown, sorted(set(blind))


@dataclasses.dataclass
class Estimate:
  compute_s: float        # summed cycle estimates / clock
  comm_s: float           # collectives' bytes at the published bandwidths
  ops: list
  unknown_loops: list
  custom_calls: list      # custom calls without an estimate (Pallas kernels, ...)

  @property
  def step_s(self):
    return self.compute_s + self.comm_s


def estimate(hlo, tpu_slice):
  """The compiler's step time on `tpu_slice` from its compiled HLO: the
  per-operation cycle estimates summed (loop bodies times their trip
  counts) at the chip's clock, plus each collective's bytes at the
  published all-reduce bandwidth per chip (a reduce-scatter or all-gather
  moves half of what an all-reduce does; across slices, the DCN's). Nothing
  is assumed to overlap, so communication that XLA hides behind compute is
  counted in full: an upper estimate of the compiler's own view."""
  chip = tpu_slice.chip
  ops, unknown, blind = hlo_ops(hlo)
  per_slice = math.prod(tpu_slice.shape)
  comm = 0.0
  for op in ops:
    if not op.comm_bytes:
      continue
    bandwidth = (chip.dcn_gbs if op.group > per_slice else chip.allreduce_gbs) * 1e9
    share = 1.0 if op.kind in ("all-reduce", "collective-permute", "all-to-all") else 0.5
    comm += op.runs * share * op.comm_bytes / bandwidth
  cycles = sum(op.cycles * op.runs for op in ops)
  return Estimate(cycles / (chip.clock_ghz * 1e9), comm, ops, unknown, blind)


def top_costs(est, chip, n=12):
  """Lines of the `n` most expensive kinds of work in the step, grouped by
  jax's op name: the levers."""
  groups = {}
  for op in est.ops:
    label = op.label or op.name
    if not re.search(r"(^|/)_?[A-Z]", label):  # no flax module in its path
      label += " (outside the model: optimizer update, norms, loss)"
    key = (label, op.kind if op.comm_bytes else "compute")
    secs = op.runs * op.cycles / (chip.clock_ghz * 1e9)
    t, count = groups.get(key, (0.0, 0))
    groups[key] = (t + secs, count + op.runs)
  rows = sorted(groups.items(), key=lambda kv: -kv[1][0])[:n]
  total = est.compute_s or 1.0
  return [f"{1e3 * t:9.3f} ms {100 * t / total:5.1f}%  x{count:<4d} {label[:90]}"
          for (label, _), (t, count) in rows]


# --- the report ----------------------------------------------------------------
def verdict(total_bytes, chip):
  """(fits, words): 'fits: 2.50 of 16 GiB HBM per chip' / 'does not fit by
  3.10 GiB: 19.10 of 16 GiB HBM per chip'."""
  gib = total_bytes / 2 ** 30
  of = f"{gib:.2f} of {chip.hbm_gib:g} GiB HBM per chip"
  if gib <= chip.hbm_gib:
    return True, f"fits: {of}"
  return False, f"does not fit by {gib - chip.hbm_gib:.2f} GiB: {of}"


def out_of_memory(message):
  """The TPU compiler's refusal of a program too large for the chip, in
  the words of `verdict`: 'does not fit: 38.35 GiB of temporaries, 15.75
  GiB usable HBM per chip'."""
  need = re.search(r"required for ([\w ]+?) \(([\d.]+)([GMK])\) exceeds available HBM "
                   r"\(([\d.]+)([GMK])\)", message)
  if not need:
    line = next((l for l in message.splitlines() if "memory" in l.lower()), message)
    return f"does not fit: {' '.join(line.split())[:200]}"
  what, size, unit, have, have_unit = need.groups()
  scale = {"G": 1, "M": 1 / 1024, "K": 1 / 2 ** 20}
  gib, have_gib = float(size) * scale[unit], float(have) * scale[have_unit]
  return (f"does not fit by {gib - have_gib:.2f} GiB: the {what} alone need {gib:.2f} GiB "
          f"of {have_gib:.2f} GiB usable HBM per chip")


def memory_total(mem):
  """HBM a chip needs for the step: arguments + temporaries + outputs not
  aliased with the (donated) arguments."""
  return (mem.argument_size_in_bytes + mem.temp_size_in_bytes
          + mem.output_size_in_bytes - mem.alias_size_in_bytes)
