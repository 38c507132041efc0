"""Fine-tune one model: `accelerate launch -q --config_file configs/accelerate/one-gpu.yaml scripts/train.py --model vit
--data-dir PREPARED --output-dir OUT` (a launch without a config file leaves accelerate's defaults to be guessed, and it
says so before the script starts; CPU configs: see configs/accelerate/cpu.yaml).

Thin entry point: arguments in hfxray/arguments.py, the Trainer in hfxray/training.py, the steps after training
in hfxray/workflow.py (`--help` lists every flag).
"""

import sys

from hfxray.workflow import main

if __name__ == "__main__":
    sys.exit(main())
