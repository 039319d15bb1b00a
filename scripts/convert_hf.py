"""Convert a Hugging Face Mask2Former checkpoint directory: python scripts/convert_hf.py SRC DST"""

import sys

from m2f_lightning.checkpoints.convert import convert_hf_main

if __name__ == "__main__":
    sys.exit(convert_hf_main())
