#!/usr/bin/env bash
# benchmarks.gpu_anchor on a lent GPU machine, from the repository root, in one prepared command.
#
#   bash benchmarks/gpu_anchor_run.sh [CASE|dreamer|tdmpc2 ...]     (default: every case)
#
# The machine has no network: the official code (.scratch/official) and the wheels its dependencies need
# (.scratch/wheels) travel with the working tree; the device tool's call names both in `carry`. The wheels
# are installed into a folder of their own that only the official sides' processes see, so worldloom runs
# on the machine's own jax, flax and optax. The run stops after GPU_ANCHOR_LIMIT seconds (default 420,
# which leaves a 10-minute call and a 15-minute lease room to rerun); the results file is rewritten after
# each case, and a rerun on the same warm machine resumes after the cases it holds, its compilations
# already in the persistent caches. Results, the log and nvidia-smi's view go to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
limit=${GPU_ANCHOR_LIMIT:-420}
out=${OUT:-/tmp/gpu-anchor-out}
state=/tmp/gpu-anchor  # outlives one call while the machine stays warm
site=$state/site
mkdir -p "$out" "$state"
for needed in .scratch/official/dreamerv3/dreamerv3 .scratch/official/tdmpc2/tdmpc2 .scratch/wheels; do
  [ -d "$needed" ] || echo "gpu_anchor_run: $needed is not here (carry .scratch/official and .scratch/wheels);" \
    "its official side will be reported missing" >&2
done
# The pure-Python wheels, and of the others (tensordict) the one built for this Python.
tag=$(python3 -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
if ls .scratch/wheels/*.whl >/dev/null 2>&1 && [ ! -d "$site" ]; then
  rm -rf "$site.partial"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site.partial" \
    .scratch/wheels/*-py3-none-any.whl .scratch/wheels/*-"$tag"-"$tag"-*.whl && mv "$site.partial" "$site" \
    || { echo "gpu_anchor_run: installing .scratch/wheels for $tag failed" >&2; exit 1; }
fi
export JAX_COMPILATION_CACHE_DIR=$state/jax-cache TORCHINDUCTOR_CACHE_DIR=$state/inductor-cache PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >"$out/nvidia-smi.csv" 2>&1
python3 -m pip list 2>/dev/null | grep -E -i '^(jax|jaxlib|jax-cuda[0-9]+-(plugin|pjrt)|flax|optax|orbax-checkpoint|torch|triton|numpy) ' >"$out/packages.txt"
# GPU_ANCHOR_ARGS: more options for benchmarks.gpu_anchor (--rounds 3, or --tiny for a check of this script;
# a tiny run keeps its own results file, so that a full run never resumes from its cases).
case " ${GPU_ANCHOR_ARGS:-} " in *" --tiny "*) name=gpu_anchor-tiny ;; *) name=gpu_anchor ;; esac
timeout --signal=INT --kill-after=30 "$limit" python3 -m benchmarks.gpu_anchor --json "$state/$name.json" \
  --resume --site "$site" ${GPU_ANCHOR_ARGS:-} ${1:+--cases "$@"} 2>&1 | tee -a "$state/$name.log"
status=${PIPESTATUS[0]}
cp "$state/$name.json" "$state/$name.log" "$out/" 2>/dev/null
[ "$status" -eq 124 ] && echo "gpu_anchor_run: stopped at the ${limit} s limit; rerun to resume after the cases done" >&2
exit "$status"
