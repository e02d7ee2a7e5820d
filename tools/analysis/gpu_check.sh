#!/usr/bin/env bash
# One prepared check of the CUDA side of mmdet-ela, for a machine with a GPU.
#
#   bash tools/analysis/gpu_check.sh [OUT_DIR]
#
# OUT_DIR defaults to $OUT if set, else work_dirs/gpu_check. Runs tools/install.sh first
# (a no-op when the virtual environment ELA_VENV, default ./.venv, is up to date;
# ELA_GPU_CHECK_INSTALL=0 skips it; on a machine without a package index see install.sh's
# ELA_WHEELHOUSE). Steps, most wanted first (a short lease may end the run early):
#
#   env               torch / CUDA / device versions                      env.json
#   test_cuda         pytest tests/test_cuda.py, all but the compiled unit  test_cuda.xml
#   bench_retinanet_ops
#                     benchmark.py on the shipped RetinaNet ELA-R50 config, 1333x800,
#                     batch 2, --amp, plain dense pruned, 5 rounds, then one round op by
#                     op (--op-costs 1) and two under the profiler (--kernel-time 2): is
#                     the units' extra time the device's kernels or the host's launches,
#                     and which ops and kernels grew
#   bench_retinanet_compile
#                     bench_retinanet with attn_compile=True (torch.compile, Triton: fewer
#                     and fused kernels), with --kernel-time 2: dense and pruned compile
#                     the small ops (values and outputs made again, the CUDA default),
#                     alt the whole unit (values and outputs kept)
#   test_cuda_compile pytest tests/test_cuda.py -k compiled (slow: every shape and dtype
#                     compiles)                                        test_cuda_compile.xml
#   bench_retinanet   the same RetinaNet benchmark, 10 rounds (the CUDA targets)
#   bench_backbone    benchmark.py --model backbone --depth 50, 224, batch 4, CUDA, with
#                     the half-resolution unit (attn_value_stride=2) as the alt variant
#   bench_retinanet_kept
#                     bench_retinanet with the values and the units' outputs kept for
#                     backward (attn_recompute_values=False, attn_recompute_outputs=False;
#                     on CUDA both are made again by default): what recomputing costs in
#                     time and saves in memory
#   shapes_data       a small synthetic shapes dataset                    data/shapes
#   pruned_ckpt       the shapes config's model with the last unit of every stack
#                     pruned, saved by mmengine's save_checkpoint         pruned.pth
#   bench_shapes_mask benchmark.py on the shapes config with --mask pruned.pth
#   mmdet_benchmark   mmdet's analysis_tools/benchmark.py (inference) on the shapes
#                     config with pruned.pth (CUDA only)
#   mmdet_get_flops   mmdet's analysis_tools/get_flops.py on the shapes config (CPU or
#                     CUDA; it builds the model from the config alone, so the dense one)
#   unit_cost         unit_cost.py on CUDA at about layer3's size (chained vs unchained)
#   bench_backbone_compile
#                     bench_backbone with attn_compile=True
#   bench_backbone_bn, bench_retinanet_bn
#                     the same two with the unit of mmdet-ela 0.1 (a BN output,
#                     attn_norm_cfg=dict(type='BN'))
#   bench_backbone_lite, bench_retinanet_lite
#                     the same two with the cheap unit (attn_value_conv=False); not in
#                     the default steps: name them in ELA_GPU_CHECK_STEPS to run them
#
# Every step runs even if an earlier one failed (a step that needs an earlier step's
# output fails with it); CUDA-only steps are "skipped" without CUDA. Each step's output is
# in OUT_DIR/logs/STEP.log, the outcome of all in OUT_DIR/summary.json and summary.txt,
# and the summary is printed at the end. Exit status: 1 if any step failed, else 0.
# ELA_GPU_CHECK_STEPS="step ..." runs only those steps; ELA_GPU_CHECK_STEP_TIMEOUT=SECONDS
# stops any one step after that long (it then counts as failed).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT_DIR="${1:-${OUT:-work_dirs/gpu_check}}"
mkdir -p "$OUT_DIR/logs" && OUT_DIR="$(cd "$OUT_DIR" && pwd)"
VENV="${ELA_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
STEPS="${ELA_GPU_CHECK_STEPS:-env test_cuda bench_retinanet_ops bench_retinanet_compile test_cuda_compile bench_retinanet bench_backbone bench_retinanet_kept shapes_data pruned_ckpt bench_shapes_mask mmdet_benchmark mmdet_get_flops unit_cost bench_backbone_compile bench_backbone_bn bench_retinanet_bn}"
SHAPES_CFG="configs/shapes/retinanet_ela-r18_ela-fpn_shapes.py"
RETINA_CFG="configs/retinanet/retinanet_ela-r50_fpn_1x_coco.py"
DATA="$OUT_DIR/data/shapes"
NUM_VAL=24
# Point the shapes config at the dataset made here; no worker processes.
SHAPES_OPTS=(
  "train_dataloader.dataset.data_root=$DATA/" "val_dataloader.dataset.data_root=$DATA/"
  "test_dataloader.dataset.data_root=$DATA/"
  "val_evaluator.ann_file=$DATA/annotations/instances_val.json"
  "test_evaluator.ann_file=$DATA/annotations/instances_val.json"
  "train_dataloader.num_workers=0" "train_dataloader.persistent_workers=False"
  "val_dataloader.num_workers=0" "val_dataloader.persistent_workers=False"
  "test_dataloader.num_workers=0" "test_dataloader.persistent_workers=False")
BENCH=(tools/analysis/benchmark.py --warmup 3 --repeats 10)
RESULTS="$OUT_DIR/steps.tsv"
: > "$RESULTS"
cd "$ROOT"

if [ "${ELA_GPU_CHECK_INSTALL:-1}" = 1 ] && ! bash tools/install.sh > "$OUT_DIR/logs/install.log" 2>&1; then
  echo "[gpu_check] tools/install.sh failed (see $OUT_DIR/logs/install.log); going on" >&2
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
HAS_CUDA="$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)"
MMDET_TOOLS="$("$PY" -c 'import mmdet, os; print(os.path.join(os.path.dirname(mmdet.__file__), ".mim", "tools", "analysis_tools"))' 2>/dev/null)"

wanted() { [[ " $STEPS " == *" $1 "* ]]; }

# step NAME NEEDS_CUDA(0|1) COMMAND...: run, log, record status and seconds.
step() {
  local name="$1" cuda="$2"; shift 2
  wanted "$name" || return 0
  if [ "$cuda" = 1 ] && [ "$HAS_CUDA" != 1 ]; then
    printf '%s\tskipped\t0\tno CUDA\n' "$name" >> "$RESULTS"
    echo "[gpu_check] $name: skipped (no CUDA)"
    return 0
  fi
  echo "[gpu_check] $name ..."
  local start=$SECONDS rc log="$OUT_DIR/logs/$name.log"
  printf '$ %s\n' "$*" > "$log"
  if [ -n "${ELA_GPU_CHECK_STEP_TIMEOUT:-}" ]; then
    timeout "$ELA_GPU_CHECK_STEP_TIMEOUT" "$@" >> "$log" 2>&1
  else
    "$@" >> "$log" 2>&1
  fi
  rc=$?
  local status=ok; [ $rc = 0 ] || status=failed
  printf '%s\t%s\t%s\texit %s\n' "$name" "$status" "$((SECONDS - start))" "$rc" >> "$RESULTS"
  echo "[gpu_check] $name: $status ($((SECONDS - start)) s)"
  [ $rc = 0 ] || tail -n 5 "$OUT_DIR/logs/$name.log" | sed 's/^/    /'
}

step env 0 "$PY" -c "
import json, platform, torch, mmcv, mmdet, mmengine
env = dict(python=platform.python_version(), torch=torch.__version__,
           torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(),
           device=torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu',
           mmcv=mmcv.__version__, mmdet=mmdet.__version__, mmengine=mmengine.__version__)
json.dump(env, open('$OUT_DIR/env.json', 'w'), indent=2); print(env)"
step test_cuda 1 "$PY" -m pytest -q -rfE --tb=short tests/test_cuda.py -k "not compiled" \
  --junitxml="$OUT_DIR/test_cuda.xml"
step bench_retinanet_ops 1 "$PY" tools/analysis/benchmark.py --warmup 3 --repeats 5 "$RETINA_CFG" \
  --img-size 800 1333 --batch-size 2 --device cuda --amp --variants plain dense pruned \
  --out "$OUT_DIR/bench_retinanet_r50_amp_ops.json" --op-costs 1 --kernel-time 2
step bench_retinanet_compile 1 "$PY" "${BENCH[@]}" "$RETINA_CFG" --img-size 800 1333 \
  --batch-size 2 --device cuda --amp --variants plain dense pruned alt \
  --out "$OUT_DIR/bench_retinanet_r50_amp_compile.json" \
  --kernel-time 2 --cfg-options model.backbone.attn_compile=True \
  --alt-options model.backbone.attn_recompute_values=False \
  model.backbone.attn_recompute_outputs=False
step test_cuda_compile 1 "$PY" -m pytest -q -rfE --tb=short tests/test_cuda.py -k compiled \
  --junitxml="$OUT_DIR/test_cuda_compile.xml"
step bench_retinanet 1 "$PY" "${BENCH[@]}" "$RETINA_CFG" --img-size 800 1333 --batch-size 2 \
  --device cuda --amp --variants plain dense pruned --out "$OUT_DIR/bench_retinanet_r50_amp.json"
step bench_backbone 1 "$PY" "${BENCH[@]}" --model backbone --depth 50 --img-size 224 \
  --batch-size 4 --device cuda --out "$OUT_DIR/bench_backbone_r50.json" \
  --alt-options attn_value_stride=2
step bench_retinanet_kept 1 "$PY" "${BENCH[@]}" "$RETINA_CFG" --img-size 800 1333 \
  --batch-size 2 --device cuda --amp --variants plain dense pruned \
  --out "$OUT_DIR/bench_retinanet_r50_amp_kept.json" \
  --cfg-options model.backbone.attn_recompute_values=False \
  model.backbone.attn_recompute_outputs=False
step shapes_data 0 "$PY" tools/misc/make_shapes_dataset.py --out-dir "$DATA" --num-train 8 \
  --num-val $NUM_VAL --no-progress
step pruned_ckpt 0 "$PY" - "$SHAPES_CFG" "$OUT_DIR/pruned.pth" <<'EOF'
# Build the shapes model, prune the last unit of every stack with 2 or more
# units, save it as a checkpoint and its mask as JSON.
import json, sys
from mmengine.runner import save_checkpoint
from mmdet_ela.analysis.settings import load_config
from mmdet_ela.analysis.variants import build_model, drop_pretrained
from mmdet_ela.pruning import apply_masks, get_masks
cfg_path, out = sys.argv[1:]
model = build_model(drop_pretrained(load_config(cfg_path).model)[0])
masks = {n: [True] * (len(m) - 1) + [len(m) < 2]
         for n, m in get_masks(model).items()}
apply_masks(model, masks)
save_checkpoint(dict(state_dict=model.state_dict(), meta=dict(mask=masks)), out)
json.dump(masks, open(out[:-len('.pth')] + '_mask.json', 'w'), indent=2)
print('pruned', {n: m.count(False) for n, m in masks.items()}, '->', out)
EOF
step bench_shapes_mask 1 "$PY" "${BENCH[@]}" "$SHAPES_CFG" --img-size 320 --batch-size 8 \
  --device cuda --mask "$OUT_DIR/pruned.pth" --out "$OUT_DIR/bench_shapes_mask.json"
step mmdet_benchmark 1 "$PY" "$MMDET_TOOLS/benchmark.py" "$SHAPES_CFG" \
  --checkpoint "$OUT_DIR/pruned.pth" --task inference --max-iter $NUM_VAL --num-warmup 5 \
  --log-interval 5 --work-dir "$OUT_DIR/mmdet_benchmark" --cfg-options "${SHAPES_OPTS[@]}"
step mmdet_get_flops 0 "$PY" "$MMDET_TOOLS/get_flops.py" "$SHAPES_CFG" --num-images 2 \
  --cfg-options "${SHAPES_OPTS[@]}"
# layer3 of R-50 at 1333x800 is 50x84; --size 64 gives about its area (square)
step unit_cost 1 "$PY" tools/analysis/unit_cost.py --channels 1024 --size 64 --units 6 \
  --device cuda --out "$OUT_DIR/unit_cost_layer3_size64.json"
step bench_backbone_compile 1 "$PY" "${BENCH[@]}" --model backbone --depth 50 --img-size 224 \
  --batch-size 4 --device cuda --out "$OUT_DIR/bench_backbone_r50_compile.json" \
  --cfg-options attn_compile=True
step bench_backbone_bn 1 "$PY" "${BENCH[@]}" --model backbone --depth 50 --img-size 224 \
  --batch-size 4 --device cuda --out "$OUT_DIR/bench_backbone_r50_bn.json" \
  --cfg-options attn_norm_cfg.type=BN
step bench_retinanet_bn 1 "$PY" "${BENCH[@]}" "$RETINA_CFG" --img-size 800 1333 \
  --batch-size 2 --device cuda --amp --variants plain dense pruned \
  --out "$OUT_DIR/bench_retinanet_r50_amp_bn.json" \
  --cfg-options model.backbone.attn_norm_cfg.type=BN
step bench_backbone_lite 1 "$PY" "${BENCH[@]}" --model backbone --depth 50 --img-size 224 \
  --batch-size 4 --device cuda --out "$OUT_DIR/bench_backbone_r50_lite.json" \
  --cfg-options attn_value_conv=False
step bench_retinanet_lite 1 "$PY" "${BENCH[@]}" "$RETINA_CFG" --img-size 800 1333 \
  --batch-size 2 --device cuda --amp --variants plain dense pruned \
  --out "$OUT_DIR/bench_retinanet_r50_amp_lite.json" \
  --cfg-options model.backbone.attn_value_conv=False

"$PY" - "$RESULTS" "$OUT_DIR" <<'EOF'
import json, sys
rows = [line.rstrip('\n').split('\t') for line in open(sys.argv[1]) if line.strip()]
steps = [dict(step=s, status=st, seconds=int(t), detail=d) for s, st, t, d in rows]
json.dump(dict(steps=steps, out_dir=sys.argv[2]),
          open(f'{sys.argv[2]}/summary.json', 'w'), indent=2)
lines = [f'{r["step"]:<25}{r["status"]:<9}{r["seconds"]:>6} s  {r["detail"]}' for r in steps]
counts = {k: sum(r['status'] == k for r in steps) for k in ('ok', 'failed', 'skipped')}
lines.append(', '.join(f'{v} {k}' for k, v in counts.items()) + f'; logs in {sys.argv[2]}/logs')
open(f'{sys.argv[2]}/summary.txt', 'w').write('\n'.join(lines) + '\n')
print('\n[gpu_check] summary\n' + '\n'.join(lines))
EOF
! grep -q $'\tfailed\t' "$RESULTS"
