"""bertedge: fine-tune, compress, export and benchmark BERT-family encoders."""

__version__ = "0.1.0"
