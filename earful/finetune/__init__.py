"""CTC fine-tuning: the paper's recipe by default, fairseq's as presets; exact resume, DDP-safe freezing."""
