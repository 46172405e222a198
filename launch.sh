#!/usr/bin/env bash
# attnlab launcher: sets up .venv on first use, then runs a command.
#   ./launch.sh                      set up, fetch Ding, train the default RNNsearch (DE->EN)
#   ./launch.sh test [pytest args]   set up, then the whole test suite
#   ./launch.sh train CONFIG[:args] --workdir DIR [--config.KEY=VALUE ...]
#   ./launch.sh sample WORKDIR [--prompt P --length N --temperature T]
#   ./launch.sh eval WORKDIR
#   ./launch.sh attend WORKDIR IMAGE...      a ViT run's attention maps of your images
#   ./launch.sh caption WORKDIR IMAGE...     a captioning run's captions and per-word attention
#   ./launch.sh retrieve WORKDIR --text T    a CLIP run's nearest images (or --image FILE: captions)
#   ./launch.sh average WORKDIR [--last N]   checkpoint averaging into WORKDIR_avgN
#   ./launch.sh compile CONFIG --devices N   ahead-of-time: memory per device, FLOPs
#   ./launch.sh tables NAME          a paper table from our code (complexity)
#   ./launch.sh tpu NAME --zone Z [--project P] [--dry_run] train CONFIG ...
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv" >&2
  "$PY" -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "== installing requirements.txt into .venv (first run takes a few minutes)" >&2
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements.txt
  if [ "${ATTNLAB_ACCELERATOR:-}" = tpu ]; then
    .venv/bin/python -m pip install -q "jax[tpu]==$(.venv/bin/python -c 'import jax; print(jax.__version__)')"
    # gs:// workdirs: epath reads them through gcsfs; orbax asks the bucket
    # for its layout through google-cloud-storage.
    .venv/bin/python -m pip install -q gcsfs==2026.10.1 google-cloud-storage==3.17.1
  fi
  echo "$want" > "$stamp"
fi
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$HOME/.cache/attnlab/jax}
export PYTHONUNBUFFERED=1
PYBIN=.venv/bin/python

cmd=${1:-default}
case "$cmd" in
  default)
    shift || true
    exec "$PYBIN" -m attnlab.main train --config configs/seq2seq.py:data=ding \
      --workdir "${WORKDIR:-runs/ding_rnnsearch}" "$@"
    ;;
  test)
    shift
    exec "$PYBIN" -m pytest -q "$@"  # pytest.ini: testpaths = tests
    ;;
  tables)
    shift
    exec "$PYBIN" -m experiments.tables "$@"
    ;;
  train|prepare|sample|attend|caption|retrieve|eval|average|compile|tpu)
    shift
    if [ "$cmd" = train ] || [ "$cmd" = prepare ] || [ "$cmd" = compile ]; then
      [ $# -ge 1 ] && [ "${1#-}" = "$1" ] && set -- --config "$@"
    fi
    exec "$PYBIN" -m attnlab.main "$cmd" "$@"
    ;;
  *)
    echo "unknown command '$cmd': use test, train, prepare, sample, attend, caption, retrieve, eval, average, compile, tables or tpu (see README.md)" >&2
    exit 2
    ;;
esac
