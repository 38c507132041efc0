"""Fine-tune one model: `accelerate launch scripts/train.py --model vit --data-dir PREPARED --output-dir OUT`.

Thin entry point; arguments, recipes and the Trainer live in hfxray/training.py (`--help` lists every flag).
"""

import sys

from hfxray.training import main

if __name__ == "__main__":
    sys.exit(main())
