"""`compile --tpu SLICE`: the train step compiled by the TPU compiler
(libtpu, installed into .venv on first use) for a slice's abstract chips on
this CPU machine; what it reports checked against the CPU compile of the
same config, the estimate's arithmetic against hand-made HLO, and bad input
(one line, exit 2, before anything compiles)."""
import os
import re
import subprocess

import pytest

from attnlab import tpu
from helpers import ROOT, run_cli

TINY = "configs/vit.py:i1k,variant=Ti/16,runlocal=True"


def number(pattern, text):
  return float(re.search(pattern, text).group(1).replace(",", ""))


@pytest.mark.parametrize("name,chips,topology", [
    ("v5e-256", 256, "v5e:16x16"), ("v5litepod-16", 16, "v5e:4x4"), ("v5e-8", 8, "v5e:2x4"),
    ("v5e-1", 1, "v5e:1x1"), ("v6e-128", 128, "v6e:8x16"), ("v4-8", 4, "v4:2x2x1"),
    ("v4-32", 16, "v4:2x2x4"), ("v4-64", 32, "v4:2x4x4"), ("v5p-128", 64, "v5:4x4x4"),
    ("v5p-512", 256, "v5:4x8x8"), ("v5e:4x8", 32, "v5e:4x8"), ("v4:4x4x12", 192, "v4:4x4x12")])
def test_slice_names_are_the_shapes_cloud_tpu_gives(name, chips, topology):
  """v4/v5p names count TensorCores (2 per chip), v5e/v6e names chips; the
  shapes are those of Cloud TPU's documentation."""
  s = tpu.parse_slice(name)
  assert (s.chips, s.topology_name) == (chips, topology)


@pytest.mark.parametrize("name", ["v5e-300", "v9-8", "v4-6", "v4-2", "v5e:4x4x4", "tpu"])
def test_unknown_slices_are_one_line_errors(name):
  with pytest.raises(tpu.SliceError) as e:
    tpu.parse_slice(name)
  assert "\n" not in str(e.value) and name in str(e.value)


HLO = """\
HloModule step, is_scheduled=true

%fused_body (p: f32[8]) -> f32[8] {
  %p = f32[8]{0} parameter(0)
  ROOT %e = f32[8]{0} exponential(%p), backend_config={"estimated_cycles":"999"}
}

%cond (c.1: (s32[], f32[8])) -> pred[] {
  %c.1 = (s32[], f32[8]{0}) parameter(0)
  %lim = s32[]{:T(128)} constant(5)
  %i = s32[] get-tuple-element(%c.1), index=0
  ROOT %lt = pred[] compare(%i, %lim), direction=LT
}

%body (b.1: (s32[], f32[8])) -> (s32[], f32[8]) {
  %b.1 = (s32[], f32[8]{0}) parameter(0)
  %x = f32[8]{0} get-tuple-element(%b.1), index=1
  %fusion.2 = f32[8]{0} fusion(%x), kind=kLoop, calls=%fused_body, metadata={op_name="jit(step)/jvp(Model)/layer/exp"}, backend_config={"estimated_cycles":"100"}
  ROOT %t = (s32[], f32[8]{0}) tuple(%i, %fusion.2)
}

%cheap (x.1: f32[8]) -> f32[8] {
  %x.1 = f32[8]{0} parameter(0)
  ROOT %f.1 = f32[8]{0} fusion(%x.1), kind=kLoop, calls=%fused_body, backend_config={"estimated_cycles":"10"}
}

%dear (x.2: f32[8]) -> f32[8] {
  %x.2 = f32[8]{0} parameter(0)
  ROOT %f.2 = f32[8]{0} fusion(%x.2), kind=kLoop, calls=%fused_body, backend_config={"estimated_cycles":"70"}
}

%gather_start (q: bf16[256]) -> (bf16[256], bf16[1024]) {
  %q = bf16[256]{0} parameter(0)
  %all-gather.7 = bf16[1024]{0} all-gather(%q), replica_groups=mesh['axis_0'=4,'axis_1'=1] {'axis_0'}, dimensions={0}
  ROOT %cs = (bf16[256]{0}, bf16[1024]{0}) custom-call(%all-gather.7), custom_call_target="AsyncCollectiveStart"
}

%gather_done (r: bf16[256], s: bf16[1024]) -> bf16[1024] {
  %r = bf16[256]{0} parameter(0)
  %s = bf16[1024]{0} parameter(1)
  %all-gather.8 = bf16[1024]{0} all-gather(%r), replica_groups={{0,1,2,3}}, dimensions={0}
  ROOT %cd = bf16[1024]{0} custom-call(%all-gather.8, %s), custom_call_target="AsyncCollectiveDone"
}

ENTRY %main (a: f32[1024]) -> f32[1024] {
  %a = f32[1024]{0} parameter(0)
  %fusion.1 = f32[1024]{0} fusion(%a), kind=kLoop, calls=%fused_body, metadata={op_name="jit(step)/transpose(jvp(Model))/head/dot_general"}, backend_config={"estimated_cycles":"3000"}
  %w = (s32[], f32[8]{0}) while(%t0), condition=%cond, body=%body
  %c = f32[8]{0} conditional(%pred, %a, %a), true_computation=%cheap, false_computation=%dear
  %all-reduce.1 = f32[1024]{0} all-reduce(%fusion.1), replica_groups=[1,4]<=[4], to_apply=%add
  %reduce-scatter.1 = f32[256]{0} reduce-scatter(%fusion.1), replica_groups={{0,1,2,3}}, dimensions={0}
  %h = bf16[256]{0} parameter(1)
  %start = (bf16[256]{0}, bf16[1024]{0}) fusion(%h), kind=kCustom, calls=%gather_start
  %g0 = bf16[256]{0} get-tuple-element(%start), index=0
  %g1 = bf16[1024]{0} get-tuple-element(%start), index=1
  %done = bf16[1024]{0} fusion(%g0, %g1), kind=kCustom, calls=%gather_done
  ROOT %cc = f32[1024]{0} custom-call(%all-reduce.1), custom_call_target="tpu_custom_call"
}
"""


def test_the_estimate_counts_loop_bodies_by_trip_count_and_collectives_by_bytes():
  """A hand-made compiled HLO: 3000 cycles in the entry + a fusion of 100
  cycles in a loop of 5 trips (the fused computation's own 999 is inside a
  fusion: not counted again) + a conditional whose dearer branch costs 70
  (of 10 and 70: one branch runs); an all-reduce of 4 KiB, a reduce-scatter
  of 256 floats out of 1024 over 4 chips, and an all-gather of 1024
  bfloat16 held inside an async collective's start fusion (its done fusion
  holds a copy: counted once); a Pallas-like custom call without an
  estimate is named."""
  s = tpu.parse_slice("v5e-4")
  est = tpu.estimate(HLO, s)
  chip = s.chip
  assert est.compute_s == pytest.approx((3000 + 5 * 100 + 70) / (chip.clock_ghz * 1e9))
  comm = (4096 + 0.5 * 4096 + 0.5 * 2048) / (chip.allreduce_gbs * 1e9)
  assert est.comm_s == pytest.approx(comm)
  assert est.custom_calls == ["tpu_custom_call"] and not est.unknown_loops
  assert sorted(op.group for op in est.ops if op.comm_bytes) == [4, 4, 4]
  labels = {op.label: op.runs for op in est.ops}
  assert labels["Model/layer/exp"] == 5 and labels["Model/head/dot_general"] == 1


def test_verdict_in_words():
  chip = tpu.CHIPS["v5e"]
  assert tpu.verdict(2.5 * 2 ** 30, chip) == (True, "fits: 2.50 of 16 GiB HBM per chip")
  fits, words = tpu.verdict(19.1 * 2 ** 30, chip)
  assert not fits and words.startswith("does not fit by 3.10 GiB")


@pytest.fixture(scope="module")
def libtpu():
  """The TPU compiler, installed as `compile --tpu` installs it (a fresh
  clone has none: the first test to need it installs it)."""
  return tpu.ensure_libtpu()


def test_a_tiny_config_on_v5e_2x2_agrees_with_its_cpu_compile(libtpu):
  """Parameters are the same program's; FLOPs (XLA's own count on each
  backend, a config without an analytic count) within 5%; the HBM fields
  and the verdict are there; the estimate is positive and below a second."""
  spec = "configs/wmt.py:ding,runlocal=True"
  code, tpu_out = run_cli("compile", spec, "--tpu", "v5e-4", timeout=400)
  assert code == 0, tpu_out
  code, cpu_out = run_cli("compile", spec, "--devices", "4", timeout=400)
  assert code == 0, cpu_out
  params = [number(r"([\d,]+) params", out) for out in (tpu_out, cpu_out)]
  assert params[0] == params[1]
  flops = [number(r"([\d.e+-]+) TFLOP per step", out) for out in (tpu_out, cpu_out)]
  assert flops[0] == pytest.approx(flops[1], rel=0.05), flops
  assert "4 x TPU v5 lite chips" in tpu_out and "{'data': 4}" in tpu_out
  for field in ("arguments", "temporaries", "outputs"):
    assert re.search(rf"{field} [\d.]+ GiB", tpu_out)
  assert re.search(r"v5e-4: fits: [\d.]+ of 16 GiB HBM per chip", tpu_out)
  step_ms = number(r"estimated step .*?: ([\d.]+) ms", tpu_out)
  assert 0 < step_ms < 1000
  assert "MFU" in tpu_out and "roofline bound" in tpu_out


def test_two_slices_over_dcn_compile_on_a_hybrid_mesh(libtpu):
  """--slices 2: the batch axis spans the slices (a hybrid ICI x DCN mesh),
  eight chips in all."""
  code, out = run_cli("compile", "configs/wmt.py:ding,runlocal=True", "--tpu", "v5e-4",
                      "--slices", "2", timeout=400)
  assert code == 0, out
  assert "2 x v5e-4: 8 x TPU v5 lite chips (v5e:2x2 x 2 slices" in out
  assert "{'data': 8}" in out and "2 x v5e-4: fits:" in out


def test_a_scanned_stack_is_estimated_like_the_unrolled_one(libtpu):
  """The scan's body runs `depth` times: counted so, four more layers add
  to the estimate of a scanned stack what they add to the same layers
  unrolled (within 20%: the loop's own bookkeeping differs). Counted once,
  they would add nothing."""
  added = {}
  for scan in ("True", "False"):
    steps = []
    for depth in (2, 6):
      code, out = run_cli("compile", TINY, "--tpu", "v5e-4", f"--config.model.scan={scan}",
                          f"--config.model.depth={depth}", "--config.model.width=128",
                          "--config.model.mlp_dim=512", "--config.model.num_heads=2",
                          "--config.model.dtype=float32", timeout=400)
      assert code == 0, out
      steps.append(number(r"estimated step .*?: [\d.]+ ms = ([\d.]+) compute", out))
    added[scan] = steps[1] - steps[0]
  assert added["False"] > 0.2, added  # four layers of this size: ~0.4 ms
  assert added["True"] == pytest.approx(added["False"], rel=0.2), added


def test_a_state_larger_than_the_chip_does_not_fit_and_the_pod_is_not_created(libtpu):
  """A 2.1 G-parameter embedding (8 GiB in float32, 25 GiB with Adam's
  moments) on v5e's 16 GiB chips, replicated: `tpu --accelerator` refuses
  to create the slice in one line, exit 2; `compile` says by how much, exit 1."""
  big = ["configs/wmt.py:ding,runlocal=True", "--config.data.vocab_size=2000000",
         "--config.model.d_model=1024", "--config.model.num_heads=8"]
  p = subprocess.run(["./launch.sh", "tpu", "my-pod", "--zone", "z", "--accelerator", "v5e-4",
                      "--dry_run", "train", *big, "--workdir", "gs://b/run"],
                     cwd=ROOT, capture_output=True, text=True, timeout=400)
  assert p.returncode == 2, p.stdout + p.stderr
  last = p.stderr.strip().splitlines()[-1]
  assert last.startswith("error: not creating my-pod") and "does not fit by" in last
  assert "gcloud" not in p.stdout
  code, out = run_cli("compile", *big, "--tpu", "v5e-4", timeout=400)
  assert code == 1 and re.search(r"v5e-4: does not fit by [\d.]+ GiB", out), out


def test_the_pod_commands_create_the_slice_that_was_checked(libtpu):
  p = subprocess.run(["./launch.sh", "tpu", "my-pod", "--zone", "z", "--accelerator", "v5e-4",
                      "--dry_run", "train", "configs/wmt.py:ding,runlocal=True", "--workdir",
                      "gs://b/run"], cwd=ROOT, capture_output=True, text=True, timeout=400)
  assert p.returncode == 0, p.stderr
  gcloud = [line for line in p.stdout.splitlines() if line.startswith("gcloud")]
  assert gcloud[0] == ("gcloud compute tpus tpu-vm create my-pod --accelerator-type=v5e-4 "
                       "--version=v2-alpha-tpuv5-lite --zone=z")
  assert "v5e-4: fits:" in p.stdout


@pytest.mark.parametrize("args,says", [
    (["--tpu", "v5e-300"], "v5e slices are named by chips"),
    (["--tpu", "v9-8"], "unknown TPU slice; use one of v4-8"),
    (["--tpu", "v5e-4", "--devices", "4"], "--devices and --tpu together"),
    (["--slices", "2"], "--slices needs --tpu"),
    (["--tpu", "v5e-4", "--config.mesh=(('data', 3),)"], "needs a multiple of 3 devices, 4"),
])
def test_bad_requests_are_one_line_exit_2_before_anything_compiles(args, says):
  code, out = run_cli("compile", "configs/wmt.py:ding,runlocal=True", *args)
  assert code == 2 and out.strip().count("\n") == 0 and says in out, out
  assert "compiling" not in out


def test_a_libtpu_that_cannot_be_installed_says_what_to_install_by_hand(tmp_path):
  """pip without an index (as offline): one line naming the pinned
  requirement and the command to run by hand, exit 2."""
  env = {"ATTNLAB_LIBTPU": str(tmp_path / "libtpu"), "PIP_NO_INDEX": "1",
         "PIP_FIND_LINKS": str(tmp_path)}
  code, out = run_cli("compile", "configs/wmt.py:ding,runlocal=True", "--tpu", "v5e-4", env=env)
  last = out.strip().splitlines()[-1]
  assert code == 2 and last.startswith("error: libtpu could not be installed"), out
  assert tpu.libtpu_requirement() in last and "--target" in last
  assert not os.path.exists(tmp_path / "libtpu")
