"""SUPERB-style probes of frozen representations: features of every layer cached once, a learned softmax
weighting over layers, small task heads (PR, ASR, SID, IC); see ``suite.run_suite`` and ``docs/probes.md``."""
