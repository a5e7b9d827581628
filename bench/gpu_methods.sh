#!/usr/bin/env bash
# The GKD, sequence-classification and embedding stages once each on one GPU, on the Qwen2.5-0.5B shape (random
# init, the demo tokenizer and sample data), full training (init_from_config), LoRA and QLoRA (a random checkpoint
# saved first: QLoRA quantizes loaded weights). GKD distils from a random Qwen2.5-1.5B-shaped teacher.
#   OUT=/results bash bench/gpu_methods.sh [all|gkd|seq_cls|embedding] [all|full|lora|qlora]   (STEPS=40 per run; EXTRA_ARGS: more overrides)
# Writes OUT/methods/<stage>_<mode>.log and .manifest.json, and OUT/methods/summary.json (metrics, peak memory,
# runtime per run).
set -uo pipefail
cd "$(dirname "$0")/.."
WHICH=${1:-all} WHICH_MODE=${2:-all} STEPS=${STEPS:-40}
RESULTS=${OUT:?set OUT to the results folder}/methods
WORK=${METHODS_WORK:-/tmp/methods_work}  # the random checkpoints are saved once per machine
mkdir -p "$RESULTS"
PY=${PYTHON:-python3}

[ -f "$WORK/saved" ] || $PY - "$WORK" <<'EOF'
import json, sys
from pathlib import Path
sys.path.insert(0, "bench")
from common import SHAPES, save_random_checkpoint

work = Path(sys.argv[1])
(work / "shape").mkdir(parents=True, exist_ok=True)
(work / "shape" / "config.json").write_text(json.dumps(SHAPES["0.5b"], indent=2))
save_random_checkpoint("0.5b", work / "student")
save_random_checkpoint("1.5b", work / "teacher", seed=1)
(work / "saved").touch()
EOF
cp -r examples/tiny/tokenizer/. "$WORK/student/"
cp -r examples/tiny/tokenizer/. "$WORK/teacher/"

declare -A SCRIPT=([gkd]=self_model/distill/train_gkd.py [seq_cls]=self_model/fine_tuning/train_seq_cls.py
                   [embedding]=self_model/fine_tuning/train_embedding.py)
declare -A CONFIG=([gkd]=config/examples/gkd_tiny.yaml [seq_cls]=config/examples/seq_cls_tiny.yaml
                   [embedding]=config/examples/embedding_tiny.yaml)
declare -A EXTRA=([gkd]="gkd.teacher=$WORK/teacher gkd.max_new_tokens=64" [seq_cls]="" [embedding]="")
MODES=("full model.init_from_config=$WORK/shape/config.json"
       "lora model.init_from_config=$WORK/shape/config.json peft.enabled=true"
       "qlora model_name_or_path=$WORK/student model.init_from_config=null peft.enabled=true peft.method=qlora")

for stage in gkd seq_cls embedding; do
  [[ "$WHICH" == all || "$WHICH" == "$stage" ]] || continue
  for mode_args in "${MODES[@]}"; do
    read -r mode overrides <<<"$mode_args"
    [[ "$WHICH_MODE" == all || "$WHICH_MODE" == "$mode" ]] || continue
    name="${stage}_${mode}"
    # shellcheck disable=SC2086
    timeout "${RUN_LIMIT:-900}" $PY "${SCRIPT[$stage]}" --config "${CONFIG[$stage]}" $overrides ${EXTRA[$stage]} \
      training_args.output_dir="$WORK/out_$name" training_args.max_steps=$STEPS training_args.bf16=true \
      training_args.per_device_train_batch_size=16 ${EXTRA_ARGS:-} > "$RESULTS/$name.log" 2>&1
    echo "$name: exit $? $(grep '^done' "$RESULTS/$name.log" | tail -1)"
    cp "$WORK/out_$name/manifest.json" "$RESULTS/$name.manifest.json" 2>/dev/null
    rm -rf "$WORK/out_$name"
  done
done

$PY - "$RESULTS" <<'EOF'
import json, sys
from pathlib import Path
results = Path(sys.argv[1])
summary = {}
for path in sorted(results.glob("*.manifest.json")):
    manifest = json.loads(path.read_text())
    metrics = manifest["metrics"]
    summary[path.name.removesuffix(".manifest.json")] = {
        key: metrics[key] for key in sorted(metrics)
        if key.startswith(("eval_loss", "eval_accuracy", "eval_macro_f1", "eval_retrieval_cosine_recall@1",
                           "eval_retrieval_cosine_mrr", "train_loss", "train_runtime", "peak_memory_gib"))}
    summary[path.name.removesuffix(".manifest.json")]["device"] = manifest.get("device")
(results / "summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))
EOF
