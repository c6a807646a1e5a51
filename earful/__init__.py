"""earful: wav2vec 2.0 self-supervised speech pre-training, batch size in seconds of audio."""

__version__ = "0.1.0"
