"""Evaluation: character vocabulary, greedy and LM beam CTC decoding, n-gram LM builder, WER/CER."""
