"""Test-only launcher: `unityvideo` under accelerate's sharded paths (FSDP2, DeepSpeed), on CPU processes over gloo.

accelerate installs its FSDP plugin only when the process group sits on a GPU-family device; on CPU processes it
always takes MULTI_CPU (data parallel over gloo), although torch's `fully_shard`, DTensor and
torch.distributed.checkpoint all run there. This launcher starts accelerate's CPU process group (gloo) exactly as a
CPU launch does, then records the distributed type as multi-GPU, which is the one condition accelerate checks before
taking its FSDP branch. Everything after that is accelerate's and torch's own code on CPU tensors: the plugin read from
the `accelerate launch` config, `fully_shard` of each block, sharded checkpoints, gathered state dicts.

For a DeepSpeed config, accelerate finds no GPU backend and would leave every process alone (one process of one);
naming gloo as the backend makes it start DeepSpeed's process group with it, and DeepSpeed runs on its own CPU
accelerator from there.

    python -m accelerate.commands.launch --config_file configs/accelerate/fsdp2.yaml --num_processes 2 \
        --mixed_precision no tests/sharded_on_cpu.py train --config train.yaml
"""

import os
import sys

from accelerate.state import PartialState
from accelerate.utils import DistributedType

from unityvideo_diffusers.cli import main


if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
    PartialState(backend="gloo")
else:
    PartialState(cpu=True)
    PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU
sys.exit(main(sys.argv[1:]))
