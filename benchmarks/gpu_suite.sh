#!/usr/bin/env bash
# Every GPU check of mt-tune in one run, at most ~8 minutes on one H100/H200:
#   1. the CUDA tests (tests/test_cuda.py and the pinned-batch test; on a GPU they must run, not skip)
#   2. benchmarks/gpu_throughput.py: 6+6 d512 bf16 tokens/s and MFU, with and without checkpointing
#   3. benchmarks/memory_check.py: the memory estimate against max_memory_allocated, three configs
#   4. a 4-trial study on the bundled sample through `mt-tune worker --devices all`
# then one summary table. Installs nothing beyond the project: it runs from the source tree
# (PYTHONPATH=src) with the machine's python3 and its torch; packages that machine lacks can be
# put in .whl/ as wheels (README, "GPU checks") and are unpacked to a temporary directory.
#
#   bash benchmarks/gpu_suite.sh [OUT_DIR]      (default: $OUT, else ./gpu-suite-out)
#
# Each step's full output is in OUT_DIR/<step>.log; the exit status is 1 if any step failed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${1:-${OUT:-gpu-suite-out}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}

if compgen -G ".whl/*.whl" >/dev/null; then
    site=$(mktemp -d /tmp/mt-tune-site.XXXX)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl || exit 1
    export PYTHONPATH="$PYTHONPATH:$site"
fi
"$PY" - <<'EOF' || exit 1
import importlib.util, sys
need = ["torch", "optuna", "optuna_dashboard", "sqlalchemy", "sentencepiece", "sacrebleu", "typer", "rich", "yaml",
        "numpy", "psutil", "hsk_sentences_audio", "pytest"]
missing = [m for m in need if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu_suite: missing Python packages: {', '.join(missing)} (carry them as wheels in .whl/)")
import torch
if not torch.cuda.is_available():
    sys.exit("gpu_suite: torch sees no CUDA device")
print(f"gpu_suite: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
EOF

rows=()
failed=0
# step NAME SECONDS COMMAND...: run with a time limit, keep the log, remember status and time.
step() {
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS rc
    echo "=== $name"
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
    rc=${PIPESTATUS[0]}
    [ "$rc" = 0 ] || failed=1
    rows+=("$name|$([ "$rc" = 0 ] && echo ok || echo "FAILED ($rc)")|$((SECONDS - start)) s")
}

work=$(mktemp -d /tmp/mt-tune-gpu-suite.XXXX)
step cuda-tests 150 env MT_TUNE_TEST_REQUIRE_CUDA=1 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py \
    tests/test_device.py::test_batches_for_cuda_are_pinned_and_copy_asynchronously
step throughput 90 "$PY" benchmarks/gpu_throughput.py --steps 60 --warmup 10
step memory 60 "$PY" benchmarks/memory_check.py
cat >"$work/gpu4.yaml" <<'EOF'
name: gpu4
data: {format: sample, scale: full, valid_size: 500, vocab_size: 4000, joint_vocab: true}
model: {d_model: 512, n_heads: 8, enc_layers: 6, dec_layers: 6, ffn_dim: 2048, dropout: 0.1,
        share_embeddings: true, tie_output: true}
train: {device: cuda, amp: auto, max_tokens: 8192, warmup_steps: 200, eval_every: 100, bleu_sentences: 200}
search:
  train.lr: {type: float, low: 3.0e-4, high: 2.0e-3, log: true}
  model.dropout: {type: float, low: 0.1, high: 0.3}
metric: bleu
budget: {trials: 4, max_steps: 300, max_minutes: 0.5}
EOF
study() {
    local url="sqlite:///$work/gpu4.db"
    "$PY" -m mt_tune.cli study create "$work/gpu4.yaml" --storage "$url" &&
        "$PY" -m mt_tune.cli worker gpu4 --devices all --storage "$url" --artifacts "$work/artifacts" &&
        "$PY" -m mt_tune.cli study show gpu4 --storage "$url"
}
step study-4-trials 180 study

echo
echo "=== summary ($(date -u +%Y-%m-%dT%H:%MZ))"
printf '%-16s %-12s %s\n' step status time
for row in "${rows[@]}"; do
    IFS='|' read -r name status took <<<"$row"
    printf '%-16s %-12s %s\n' "$name" "$status" "$took"
done
echo
echo "figures:"
grep -h -E "passed|failed|skipped" "$out/cuda-tests.log" | tail -n 1 | sed 's/^/  cuda tests: /'
grep -h -E "target tokens/s|checkpointing runs at" "$out/throughput.log" | sed 's/^/  throughput: /'
grep -h -E "^(config|bf16|fp32)|saves" "$out/memory.log" | sed 's/^/  memory: /'
grep -h -E "worker done|best trial" "$out/study-4-trials.log" | tail -n 2 | sed 's/^/  study: /'
rm -rf "$work"
exit "$failed"
