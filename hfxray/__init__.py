"""hfxray: fine-tune and explain chest X-ray classifiers (normal vs viral) with the Hugging Face stack."""

__version__ = "0.1.0"
