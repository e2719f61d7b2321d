#!/bin/bash
# Multi-node training under SLURM: one torchrun per node, the first host as rendezvous.
#   sbatch --nodes 2 configs/deepspeed/slurm_example.sh CONFIG.yaml [--options key=value ...]
#SBATCH --job-name=mmllm
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --output=%x-%j.out
set -euo pipefail

CONFIG=${1:?usage: sbatch configs/deepspeed/slurm_example.sh CONFIG.yaml [--options ...]}
shift
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=${MASTER_PORT:-29500}
GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-8}

# srun starts this line once per node; SLURM_NODEID is that node's rank
srun --kill-on-bad-exit=1 bash -c "torchrun --nnodes $SLURM_NNODES --nproc_per_node $GPUS_PER_NODE \
    --node_rank \$SLURM_NODEID --master_addr $MASTER_ADDR --master_port $MASTER_PORT \
    -m mmllm.cli train --config $CONFIG $*"
