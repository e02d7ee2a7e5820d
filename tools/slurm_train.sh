#!/usr/bin/env bash
# Usage: [GPUS=8] bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [train.py args...]
# For CPU-only partitions set GPUS_PER_NODE=0 (and TASKS_PER_NODE, default 1): the
# tasks then train on the CPU with the gloo backend.
set -x

PARTITION=$1
JOB_NAME=$2
CONFIG=$3
WORK_DIR=$4
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}
PY_ARGS=("${@:5}")
PYTHON=${PYTHON:-python}
if [ "${GPUS_PER_NODE}" = "0" ]; then
    GRES=""
    TASKS_PER_NODE=${TASKS_PER_NODE:-1}
else
    GRES="--gres=gpu:${GPUS_PER_NODE}"
    TASKS_PER_NODE=${TASKS_PER_NODE:-${GPUS_PER_NODE}}
fi

PYTHONPATH="$(dirname "$0")/..":$PYTHONPATH \
srun -p ${PARTITION} \
    --job-name=${JOB_NAME} \
    ${GRES} \
    --ntasks=${GPUS} \
    --ntasks-per-node=${TASKS_PER_NODE} \
    --cpus-per-task=${CPUS_PER_TASK} \
    --kill-on-bad-exit=1 \
    ${SRUN_ARGS} \
    $PYTHON -u tools/train.py "${CONFIG}" --work-dir="${WORK_DIR}" --launcher="slurm" "${PY_ARGS[@]}"
