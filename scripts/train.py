"""Fine-tune one model: `accelerate launch -q scripts/train.py --model vit --data-dir PREPARED --output-dir OUT`.

Thin entry point: arguments in hfxray/arguments.py, the Trainer in hfxray/training.py, the steps after training
in hfxray/workflow.py (`--help` lists every flag).
"""

import sys

from hfxray.workflow import main

if __name__ == "__main__":
    sys.exit(main())
