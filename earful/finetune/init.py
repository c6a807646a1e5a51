"""The model fine-tuning starts from, and which of its parameters train when.

``--init`` may be an earful checkpoint folder (pre-training or CTC), a run folder (its latest
checkpoint), a `transformers` folder (``config.json`` + weights), or ``scratch`` (``earful/train/init.py``: what
it resolved to is recorded, and part of the recipe).
The backbone (``wav2vec2.*``) is copied; the quantizer and contrastive projections of a pre-training model are
dropped; the CTC head is new (copied too when the source is a CTC model with the same vocabulary).

**Freezing and DDP.** DDP registers the parameters that require gradients once, when it wraps the model;
toggling ``requires_grad`` later leaves them out of its all-reduce. So:

* parameters frozen for the whole run (the CNN, the feature projection in the paper's recipe, the mask
  vector when nothing is masked) get ``requires_grad=False`` before DDP wraps the model, and never change;
* parameters frozen only for the first ``freeze_transformer_steps`` (the rest of the backbone) keep
  ``requires_grad=True`` throughout; during that phase their gradients are set to ``None`` after the
  backward pass, so the optimizer skips them (no update, no weight decay, no Adam moments) and the
  clipping norm leaves them out. Under DDP their gradients are still computed and all-reduced (wasted
  work, but correct); on a single device the backbone then runs under ``no_grad`` instead.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from earful.checkpoint import INFO_FILE, read_info, read_json
from earful.eval.vocab import CharVocab
from earful.finetune.config import FinetuneConfig
from earful.model import Wav2Vec2ForCTC, Wav2Vec2ForPreTraining, load_model_config
from earful.model.config import preset_differs
from earful.train.init import SCRATCH, InitWeights, init_path, load_init, resolve_init

log = logging.getLogger(__name__)


def init_vocab(init: InitWeights, mapping: dict[str, str] | None) -> tuple[CharVocab, dict[str, Any] | None]:
    """``vocab=init``: the vocabulary of the initial CTC model (an earful CTC checkpoint's, or a transformers
    folder's ``vocab.json`` as earful spells it: lower-case, its multi-character tokens as stand-ins), with the
    run's text mapping; and, where earful spells it otherwise, the initial model's own ``spelling`` (its
    ``symbols`` in output order and special ``tokens``), which the run's checkpoints keep so that ``export-hf``
    writes the tokenizer the initial model had (``<pad>``, ``<unk>``, upper case), not earful's stand-ins.
    ValueError where the initial model has no CTC head."""
    from earful.eval.evaluate import vocab_from_checkpoint

    path = Path(init.path)
    symbols, inherited, tokens, spelling = None, {}, {}, None
    if init.path != SCRATCH and (path / INFO_FILE).exists():
        vocab = read_info(path).get("vocab") or {}
        symbols, inherited = vocab.get("symbols"), vocab.get("mapping") or {}
        tokens, spelling = vocab.get("tokens") or {}, vocab.get("spelling")
    elif init.path != SCRATCH and (path / "config.json").exists():
        from earful.interop.hf import ctc_vocab, special_tokens

        config = read_json(path / "config.json")
        outputs, inherited = config.get("vocab_size"), config.get("earful_text_mapping") or {}
        if (path / "vocab.json").exists() and isinstance(outputs, int):
            symbols = ctc_vocab(path, outputs)  # the head's order once imported: the blank first
            tokens = special_tokens(path, symbols)
    if not symbols:
        raise ValueError(f"vocab=init: --init {init.path} is no CTC model (no vocabulary); use vocab=english or "
                         "vocab=data")
    found = vocab_from_checkpoint({"symbols": list(symbols)}, init.path)
    if spelling is None and found.symbols != list(symbols):
        spelling = {"symbols": list(symbols), **({"tokens": tokens} if tokens else {})}
    if inherited:  # the text the model was trained to spell: its mapping goes on, the run's own over it
        log.info("vocab=init: the text mapping of %s (%s) goes on, text_mapping over it", init.path, inherited)
    return CharVocab(found.symbols, {**inherited, **(mapping or {})} or None), spelling


def check_init_source(cfg: FinetuneConfig, key: str = "--init") -> None:
    """What the run refuses of ``cfg.init`` at once, checked without reading weights (``--print-config``): an
    init that names nothing there (``key``: the option or setting that gave it), and ``vocab=init`` of a model
    with no vocabulary (scratch, a pre-trained one). No init passes (a config printed as a template)."""
    if not cfg.init.strip():
        return
    path = SCRATCH if cfg.init == SCRATCH else str(init_path(cfg.init, key))
    if cfg.vocab == "init":
        init_vocab(InitWeights(path, None), cfg.text_mapping)


def init_ctc_head(head: nn.Linear, how: str, blank_id: int = 0) -> None:
    """``paper``: torch's default init, then blank bias + 5 and the other rows × 0.1 (nanow2v2's
    ``init_linear_for_ctc``); ``xavier``: Xavier-uniform weights, zero bias (fairseq); ``torch``: as built."""
    with torch.no_grad():
        if how == "paper":
            head.bias[blank_id] += 5.0
            rows = torch.ones(head.out_features, dtype=torch.bool)
            rows[blank_id] = False
            head.weight[rows] *= 0.1
        elif how == "xavier":
            nn.init.xavier_uniform_(head.weight)
            nn.init.zeros_(head.bias)
        elif how != "torch":
            raise ValueError(f"unknown head_init {how!r}")


def build_initial_model(cfg: FinetuneConfig, vocab: CharVocab, init: InitWeights | None = None) -> Wav2Vec2ForCTC:
    """The CTC model at step 0: the source's backbone (``init``: what ``cfg.init`` resolved to, by default
    resolved here), ``cfg.model`` regularisation, a new head.

    Random parts are drawn from ``torch.manual_seed(cfg.seed)``, so the same config gives the same model.
    """
    init = init or resolve_init(cfg.init)
    source, symbols, what = load_init(init)
    torch.manual_seed(cfg.seed)
    base = load_model_config(cfg.model_preset) if source is None else source.cfg  # type: ignore[union-attr]
    unused = source is not None and cfg.model_preset != FinetuneConfig.model_preset
    if unused and preset_differs(cfg.model_preset, base):
        log.warning("model_preset=%s is not used: it is the architecture of a scratch model, and the model is %s's "
                    "(%d layers of %d)", cfg.model_preset, cfg.init, base.num_layers, base.hidden_size)
    model = Wav2Vec2ForCTC(cfg.model.apply(base), len(vocab))
    init_ctc_head(model.lm_head, cfg.head_init, vocab.blank_id)
    if source is not None:
        if not isinstance(source, Wav2Vec2ForPreTraining | Wav2Vec2ForCTC):
            raise TypeError(f"cannot fine-tune a {type(source).__name__}")
        model.wav2vec2.load_state_dict(source.wav2vec2.state_dict(), strict=True)
        if isinstance(source, Wav2Vec2ForCTC) and symbols is not None:
            from earful.eval.evaluate import vocab_from_checkpoint

            own = vocab_from_checkpoint({"symbols": list(symbols)}, cfg.init).symbols  # as the run spells it
            if list(own) == list(vocab.symbols):
                model.lm_head.load_state_dict(source.lm_head.state_dict())
                what += " (its CTC head too: same vocabulary)"
            else:  # a trained head thrown away: said, with the setting that keeps it
                log.warning("--init %s is a CTC model whose head (%d symbols: %s) does not fit this run's vocabulary "
                            "(vocab=%s, %d symbols): a new head is trained; vocab=init keeps the model's", cfg.init,
                            len(own), " ".join(own[1:]), cfg.vocab, len(vocab))
    log.info("initial model: %s%s", what, f" (weights' SHA-256 {init.sha256})" if init.sha256 else "")
    return model


def permanently_frozen(model: Wav2Vec2ForCTC, cfg: FinetuneConfig) -> list[str]:
    """Names of the parameters that never train in this run."""
    names = []
    for name, _ in model.named_parameters():
        if cfg.freeze_feature_encoder and name.startswith("wav2vec2.feature_encoder."):
            names.append(name)
        elif cfg.freeze_feature_projection and name.startswith("wav2vec2.feature_projection."):
            names.append(name)
        elif name == "wav2vec2.mask_emb" and model.cfg.mask_prob <= 0:
            names.append(name)  # never used: DDP would wait for its gradient for ever
    return names


def phase_frozen(model: Wav2Vec2ForCTC, cfg: FinetuneConfig) -> list[str]:
    """Names of the parameters frozen for the first ``freeze_transformer_steps``: the trainable backbone."""
    if cfg.freeze_transformer_steps <= 0:
        return []
    return [n for n, p in model.named_parameters() if n.startswith("wav2vec2.") and p.requires_grad]


def apply_permanent_freeze(model: Wav2Vec2ForCTC, cfg: FinetuneConfig) -> list[str]:
    """Set ``requires_grad=False`` on the parameters that never train (before any DDP wrapping)."""
    names = permanently_frozen(model, cfg)
    params = dict(model.named_parameters())
    for n in names:
        params[n].requires_grad_(False)
    return names
