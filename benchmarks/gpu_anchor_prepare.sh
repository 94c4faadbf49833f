#!/usr/bin/env bash
# Lays out what benchmarks.gpu_anchor's official sides need under .scratch/ (which git ignores), from the
# repository root, on a machine with PyPI:
#
#   bash benchmarks/gpu_anchor_prepare.sh DREAMERV3_GIT_DIR TDMPC2_GIT_DIR
#
# DREAMERV3_GIT_DIR and TDMPC2_GIT_DIR are git directories (a clone's .git, or a bare mirror) of
# danijar/dreamerv3 and nicklashansen/tdmpc2 that hold the pinned commits below. Writes
#   .scratch/official/dreamerv3/{dreamerv3,embodied,COMMIT}   danijar/dreamerv3 at DREAMERV3_COMMIT
#   .scratch/official/tdmpc2/{tdmpc2,COMMIT}                  nicklashansen/tdmpc2 at TDMPC2_COMMIT
#   .scratch/wheels/   the wheels they import that the GPU image lacks (pure Python, and tensordict for
#                      CPython 3.11 and 3.12)
#   .scratch/site/     those wheels installed for this machine's Python, for the CPU check (--tiny)
# Each folder is built under a temporary name and renamed when complete; one that exists is left as it is
# (delete it to rebuild it). Nothing is read from or written to the repository's tracked files.
set -euo pipefail
[ $# -eq 2 ] || { sed -n 2,16p "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
dreamer_git=$1 tdmpc2_git=$2
cd "$(dirname "$0")/.."
DREAMERV3_COMMIT=e3f02248693a79dc8b0ebd62c93683888ddaccfe
TDMPC2_COMMIT=e9f59321933cbc8e11a002b842adc7d4ffae8ff1
PURE=(elements==3.22.4 ninjax==3.6.3 portal==3.8.3 ruamel.yaml==0.19.1 chex==0.1.92 einops==0.8.2 toolz==1.2.0)
TENSORDICT=tensordict==0.8.3  # the official TD-MPC2 environment's; newer releases break its WorldModel.to(device)
scratch=.scratch
mkdir -p "$scratch/official"

# export FOLDER COMMIT GIT_DIR PATH...: PATH... of COMMIT in GIT_DIR into FOLDER, with COMMIT beside them.
export_commit() {
  local folder=$1 commit=$2 git_dir=$3; shift 3
  if [ -d "$folder" ]; then echo "gpu_anchor_prepare: $folder is here already"; return; fi
  git --git-dir="$git_dir" cat-file -e "$commit^{commit}" 2>/dev/null \
    || { echo "gpu_anchor_prepare: $git_dir does not hold commit $commit" >&2; exit 1; }
  rm -rf "$folder.partial" && mkdir -p "$folder.partial"
  git --git-dir="$git_dir" archive "$commit" "$@" | tar -x -C "$folder.partial"
  echo "$commit" >"$folder.partial/COMMIT"
  mv "$folder.partial" "$folder"
  echo "gpu_anchor_prepare: $folder holds $* at $commit"
}
git_dir() {  # a clone's work tree names its .git; a git directory names itself
  if [ -d "$1/.git" ]; then echo "$1/.git"; else echo "$1"; fi
}
export_commit "$scratch/official/dreamerv3" "$DREAMERV3_COMMIT" "$(git_dir "$dreamer_git")" dreamerv3 embodied
export_commit "$scratch/official/tdmpc2" "$TDMPC2_COMMIT" "$(git_dir "$tdmpc2_git")" tdmpc2

pip_download() { python3 -m pip download -q --no-deps --only-binary=:all: "$@" 2>&1 | grep -v "is ignored" || true; }
wheels=$scratch/wheels
if [ ! -d "$wheels" ]; then
  rm -rf "$wheels.partial" && mkdir -p "$wheels.partial"
  pip_download -d "$wheels.partial" "${PURE[@]}"
  for python in 3.11 3.12; do
    pip_download -d "$wheels.partial" --python-version "$python" --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 "$TENSORDICT"
  done
  count=$(ls "$wheels.partial"/*.whl | wc -l)
  [ "$count" -eq $((${#PURE[@]} + 2)) ] \
    || { echo "gpu_anchor_prepare: expected $((${#PURE[@]} + 2)) wheels, got $count in $wheels.partial" >&2; exit 1; }
  mv "$wheels.partial" "$wheels"
  echo "gpu_anchor_prepare: $wheels holds $count wheels"
fi

site=$scratch/site
tag=$(python3 -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
if [ ! -d "$site" ]; then
  rm -rf "$site.partial"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site.partial" \
    "$wheels"/*-py3-none-any.whl "$wheels"/*-"$tag"-"$tag"-*.whl
  mv "$site.partial" "$site"
  echo "gpu_anchor_prepare: $site holds the wheels for $tag"
fi
du -sh "$scratch/official" "$wheels" | sed 's/^/gpu_anchor_prepare: /'
echo "gpu_anchor_prepare: check on the CPU with: python -m benchmarks.gpu_anchor --tiny"
