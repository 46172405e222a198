"""Checkpoint averaging (Vaswani et al. 2017, section 6.1): the new run's
parameters are the mean of the chosen checkpoints', and it evaluates like
any run."""
import jax
import numpy as np
import pytest

from attnlab import main as main_lib
from conftest import tiny_overrides
from helpers import load_state

CONFIG = "configs/charlm.py:runlocal=True"


def test_average_of_the_last_checkpoints(tmp_path, text_folder, capsys):
  wd = str(tmp_path / "run")
  main_lib.main(["train", "--config", CONFIG, "--workdir", wd,
                 *tiny_overrides(text_folder, total_steps=6, ckpt_every=2, keep_ckpts=3)])
  main_lib.main(["average", wd, "--last", "2"])
  got = load_state(wd + "_avg2")
  a, b = load_state(wd, 4)["params"], load_state(wd, 6)["params"]
  jax.tree.map(lambda g, x, y: np.testing.assert_allclose(g, (x + y) / 2, rtol=1e-6),
               got["params"], a, b)
  assert int(got["step"]) == 6
  main_lib.main(["eval", wd + "_avg2"])  # evaluable like any run
  with pytest.raises(SystemExit) as e:
    main_lib.main(["average", wd, "--last", "9"])
  assert e.value.code == 2
  assert "has 3 checkpoints" in capsys.readouterr().err
