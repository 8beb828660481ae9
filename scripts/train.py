"""Config-file training from flat YAML files, as the UnityVideo article writes them:

    python scripts/train.py --config configs/train/finetune_config.yaml

The same as `unityvideo train --config ...`; the keys are TrainConfig's (model_path, dataset_path, task, batch_size,
learning_rate, max_epochs, save_path, and the recipe's).
"""

import sys

from unityvideo_diffusers.cli import main


if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
