"""Data: manifests, corpus readers, audio loading, the synthetic corpus, batching by seconds of audio.

Modules are imported individually (``from earful.data.sampler import SecondsBatchSampler``) so that the
light ones do not pull in torch.
"""
