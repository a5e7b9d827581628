#!/usr/bin/env bash
# The speed benchmarks of docs/benchmarks.md on one GPU, in parts that each fit a 10-minute call:
#   DEVICE_OUT=$OUT bash bench/run_speed_benchmarks.sh 1|2|3|4     (results packed into DEVICE_OUT/speed_partN.tar.gz)
#   1: SFT 0.5B (TRL defaults, TRL with our switches, ours) and the packing equivalence runs
#   2: SFT 1.5B, and CPT 1.5B on the c4/wiki demo documents (DATA holds them and the minimind tokenizer)
#   3: LoRA and QLoRA on the 7B shape
#   4: DPO + LoRA 0.5B, and the SFT GPU tests (tests/test_attention.py's GPU tests run apart: pytest -m gpu)
set -uo pipefail
cd "$(dirname "$0")/.."
PART=${1:?part 1, 2, 3 or 4}
DATA=${DATA:-.gpu-data}
RESULTS=$(mktemp -d)
export OUT=$RESULTS
case "$PART" in
  1) python3 bench/sft_throughput.py --shape 0.5b
     python3 bench/sft_packing_equivalence.py ;;
  2) python3 bench/sft_throughput.py --shape 1.5b --steps 20 --warmup 4
     python3 bench/cpt_throughput.py --shape 1.5b --batch-size 4 --text "$DATA/c4_demo.jsonl#3000" \
       "$DATA/wiki_demo.txt#3000" --tokenizer "$DATA/minimind" ;;
  3) python3 bench/sft_throughput.py --shape 7b --modes trl_lora ours_lora ours_qlora_2k ours_qlora_8k \
       --batch-size 4 --steps 10 --warmup 3 ;;
  4) python3 bench/dpo_throughput.py --shape 0.5b
     python3 -m pytest -q -m gpu tests/test_sft_gpu.py -k "not deepspeed" 2>&1 | tail -5 | tee "$RESULTS/gpu_sft_tests.log" ;;
esac
tar -czf "${DEVICE_OUT:-$RESULTS}/speed_part$PART.tar.gz" -C "$RESULTS" .
