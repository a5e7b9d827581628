#!/usr/bin/env bash
# After-training tools on one GPU (docs/benchmarks.md "After training"), in two parts that each fit a 10-minute call;
# part 2 reuses part 1's models in AFTER_WORK (/tmp survives while the machine stays warm). Results: $OUT/*.json and
# $OUT/summary.md.
#   bash bench/gpu_after_training.sh 1   # 0.5B-shape SFT + LoRA, merge (bf16, fp32), transformers vs vLLM greedy
#                                        # text and tokens/s, vLLM serving the adapter directly, `vllm serve` once
#   bash bench/gpu_after_training.sh 2   # w4a16 / w8a8 / fp8 exports (needs the quantize extra's auto-round and
#                                        # compressed-tensors): size on disk, perplexity in vLLM vs bf16
set -euo pipefail
cd "$(dirname "$0")/.."
export AFTER_WORK=${AFTER_WORK:-/tmp/after_bench} OUT=${OUT:?set OUT to the results folder}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
case "${1:?part 1 or 2}" in
  1) python3 bench/after_training.py train
     python3 bench/after_training.py merge
     python3 bench/after_training.py generate
     python3 bench/after_training.py serve ;;
  2) python3 bench/after_training.py quantize ;;
esac
python3 bench/after_training.py summary
