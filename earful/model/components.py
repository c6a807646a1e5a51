"""wav2vec 2.0 building blocks, one job each (torchaudio-style), assembled in ``wav2vec2.py``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from earful.model.config import ModelConfig


def activation(name: str) -> nn.Module:
    return nn.GELU(approximate="tanh") if name == "gelu_tanh" else nn.GELU()


class GradMultiply(torch.autograd.Function):
    """Identity forward; gradient scaled by ``scale`` (fairseq's feature_grad_mult)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad * ctx.scale, None


def grad_multiply(x: torch.Tensor, scale: float) -> torch.Tensor:
    if scale == 1.0 or not torch.is_grad_enabled():
        return x
    return GradMultiply.apply(x, scale)


# --------------------------------------------------------------------------------------------------
# Feature encoder
# --------------------------------------------------------------------------------------------------
class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over channels of a (batch, channels, time) tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


def _frame_sum(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Σ over frames of x (batch, channels, frames) weighted by m (batch, 1, frames) -> (batch, channels, 1), as
    a row-vector product (on a CPU several times faster than the matrix-vector one, and no product tensor)."""
    return torch.bmm(m, x.transpose(1, 2)).transpose(1, 2)


class _MaskedGroupNormFunction(torch.autograd.Function):
    """Per-channel GroupNorm over each utterance's real frames, written for memory traffic: on a CPU, a new
    activation-sized tensor costs several times what reading one does, so the forward makes two (one without
    autograd) and the backward one, as ``nn.GroupNorm`` nearly does; sums over frames are matrix products
    or norms, which read without writing. Padded frames come out as the bias and pass no gradient back."""

    @staticmethod
    def forward(ctx, x, valid, weight, bias, eps, track):  # type: ignore[override]
        # x: (batch, channels, frames) fp32; valid: (batch, frames) bool
        m = valid.to(x.dtype)[:, None, :]  # (batch, 1, frames)
        n = m.sum(2, keepdim=True).clamp(min=1.0)  # (batch, 1, 1) real frames
        mean = _frame_sum(x, m) / n  # (batch, channels, 1)
        centred = (x - mean).mul_(valid[:, None, :])  # (batch, channels, frames), padding 0
        var = torch.linalg.vector_norm(centred, dim=-1, keepdim=True).square_() / n  # biased, as nn.GroupNorm
        rstd = torch.rsqrt(var + eps)  # (batch, channels, 1)
        scale = rstd * weight[None, :, None]
        if not track:  # no autograd: the output overwrites the centred frames
            return centred.mul_(scale).add_(bias[None, :, None])
        ctx.save_for_backward(centred, m, n, rstd, weight)
        return torch.addcmul(bias[None, :, None], centred, scale)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        centred, m, n, rstd, weight = ctx.saved_tensors
        scale = rstd * weight[None, :, None]  # (batch, channels, 1)
        g_sum = _frame_sum(grad, m)  # (batch, channels, 1): Σ over real frames
        g_dot = torch.einsum("bct,bct->bc", grad, centred)[..., None]  # Σ grad · (x - mean), real frames
        grad_x = grad * scale  # dx = scale (dy - Σdy / n - (x - mean) rstd² Σ dy (x - mean) / n), real frames
        grad_x.addcmul_(centred, -scale * rstd.square() * g_dot / n).sub_(scale * g_sum / n)
        grad_x.mul_(m)
        grad_w = (g_dot * rstd).sum((0, 2)) if ctx.needs_input_grad[2] else None
        grad_b = grad.sum((0, 2)) if ctx.needs_input_grad[3] else None
        return grad_x, None, grad_w, grad_b, None, None


class MaskedGroupNorm(nn.GroupNorm):
    """GroupNorm with one group per channel (the CNN's first layer) whose statistics can leave padding out.

    ``forward(x)`` is ``nn.GroupNorm``: each utterance's mean and variance per channel over all its frames,
    a batch's zero padding included (fairseq, transformers). ``forward(x, valid)`` takes them over the frames
    ``valid`` marks only, so an utterance's real frames come out as they do when it is alone in a batch.
    """

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """x: (batch, channels, frames); valid: (batch, frames) bool, True = a real frame, or None."""
        if valid is None:
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):  # statistics in fp32, as autocast runs nn.GroupNorm
            x = x.to(torch.promote_types(x.dtype, torch.float32))
            w, b = self.weight.to(x.dtype), self.bias.to(x.dtype)
            return _MaskedGroupNormFunction.apply(x, valid, w, b, self.eps, torch.is_grad_enabled())


class ConvBlock(nn.Module):
    """Conv1d → (GroupNorm | LayerNorm | nothing) → GELU."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, bias: bool, norm: str, act: str
    ) -> None:
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, stride=stride, padding=padding, bias=bias)
        nn.init.kaiming_normal_(self.conv.weight)
        self.norm: nn.Module
        if norm == "group":
            self.norm = MaskedGroupNorm(c_out, c_out, affine=True)
        elif norm == "layer":
            self.norm = ChannelLayerNorm(c_out, elementwise_affine=True)
        else:
            self.norm = nn.Identity()
        self.act = activation(act)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, c_in, time) -> (batch, c_out, time'); ``valid`` (batch, time') marks the real output frames
        the GroupNorm's statistics are taken over (None: all)."""
        y = self.conv(x)
        y = self.norm(y, valid) if isinstance(self.norm, MaskedGroupNorm) else self.norm(y)
        return self.act(y)


class FeatureEncoder(nn.Module):
    """Seven strided convolutions from the waveform to ~50 Hz frames."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.kernels = list(cfg.conv_kernel)
        self.strides = list(cfg.conv_stride)
        self.paddings = cfg.conv_paddings
        blocks = []
        c_in = 1
        for i, (c, k, s, p) in enumerate(zip(cfg.conv_dim, self.kernels, self.strides, self.paddings, strict=True)):
            if cfg.feat_extract_norm == "layer":
                norm = "layer"
            else:
                norm = "group" if i == 0 else "none"
            blocks.append(ConvBlock(c_in, c, k, s, p, cfg.conv_bias, norm, cfg.activation))
            c_in = c
        self.layers = nn.ModuleList(blocks)

    def layer_lengths(self, lengths: torch.Tensor, layer: int) -> torch.Tensor:
        """Frames layer ``layer`` makes from ``lengths`` frames (or samples) of its input."""
        k, s, p = self.kernels[layer], self.strides[layer], self.paddings[layer]
        return (torch.div(lengths.long() + 2 * p - k, s, rounding_mode="floor") + 1).clamp(min=0)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames produced from ``lengths`` samples (floor((L + 2p - k) / s) + 1 per layer)."""
        for i in range(len(self.layers)):
            lengths = self.layer_lengths(lengths, i)
        return lengths

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, samples) -> (batch, channels, frames).

        ``lengths`` (batch,) real samples: padding is kept out of the computation of real frames: the
        GroupNorm's statistics are over real frames only, and a padded convolution (``conv_padding``) reads
        zeros past an utterance's last real frame, as it does alone. None: the batch is one tensor, its zero
        padding counted like signal (fairseq; the only case for a batch without padding)."""
        x = wave[:, None, :]  # (batch, 1, samples)
        frames = lengths
        for i, layer in enumerate(self.layers):
            if frames is None:
                x = layer(x)
                continue
            frames = self.layer_lengths(frames, i)
            out = (x.shape[-1] + 2 * self.paddings[i] - self.kernels[i]) // self.strides[i] + 1
            valid = torch.arange(out, device=x.device)[None, :] < frames[:, None]  # (batch, frames)
            x = layer(x, valid)  # (batch, channels, frames)
            if i + 1 < len(self.layers) and self.paddings[i + 1] > 0:
                x = x * valid[:, None, :]  # the next convolution's zero padding starts at the real end
        return x


class FeatureProjection(nn.Module):
    """LayerNorm over CNN channels, then Linear to the model width. Returns both (the normed features
    are the quantizer's input in fairseq)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(cfg.conv_dim[-1], eps=cfg.layer_norm_eps)
        self.projection = nn.Linear(cfg.conv_dim[-1], cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        normed = self.layer_norm(x)  # (batch, frames, conv_dim)
        return self.projection(normed), normed  # (batch, frames, hidden), (batch, frames, conv_dim)


# --------------------------------------------------------------------------------------------------
# Transformer
# --------------------------------------------------------------------------------------------------
class PositionalConvEmbedding(nn.Module):
    """Grouped, weight-normed convolution over time ("relative positional embedding")."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d, k = cfg.hidden_size, cfg.pos_conv_kernel
        conv = nn.Conv1d(d, d, k, padding=k // 2, groups=cfg.pos_conv_groups)
        nn.init.normal_(conv.weight, mean=0.0, std=math.sqrt(4.0 / (k * d)))
        nn.init.zeros_(conv.bias)
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.remove = 1 if k % 2 == 0 else 0
        self.act = activation(cfg.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (batch, frames, hidden) -> same
        y = self.conv(x.transpose(1, 2))
        if self.remove:
            y = y[:, :, : -self.remove]
        return self.act(y).transpose(1, 2)


class SelfAttention(nn.Module):
    """Multi-head self-attention with fused QKV and ``scaled_dot_product_attention``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.num_heads = cfg.num_heads
        self.qkv = nn.Linear(d, 3 * d)  # rows: [q; k; v]
        self.out_proj = nn.Linear(d, d)
        self.dropout = cfg.attention_dropout

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        b, t, d = x.shape
        h = self.num_heads
        qkv = self.qkv(x).view(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)  # (3, batch, heads, frames, hd)
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]  # (batch, 1, 1, frames)
        y = F.scaled_dot_product_attention(
            qkv[0], qkv[1], qkv[2], attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )  # (batch, heads, frames, hd)
        return self.out_proj(y.transpose(1, 2).reshape(b, t, d))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.act = activation(cfg.activation)
        self.act_dropout = nn.Dropout(cfg.activation_dropout)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act_dropout(self.act(self.fc1(x))))


class TransformerLayer(nn.Module):
    """Post-LN (BASE): x = LN(x + drop(attn(x))); x = LN(x + drop(ffn(x))).
    Pre-LN (LARGE):  x = x + drop(attn(LN(x)));  x = x + drop(ffn(LN(x)))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.pre_ln = cfg.layer_norm_first
        self.attention = SelfAttention(cfg)
        self.attn_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.feed_forward = FeedForward(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def init_weights(self, scheme: str) -> None:
        """The Linear layers' initialisation (``ModelConfig.weight_init``); LayerNorms keep ones and zeros."""
        if scheme == "fairseq":  # init_bert_params
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, mean=0.0, std=0.02)
                    nn.init.zeros_(m.bias)
        elif scheme == "nanow2v2":
            nn.init.xavier_uniform_(self.attention.qkv.weight, gain=1 / math.sqrt(2))
            nn.init.xavier_uniform_(self.attention.out_proj.weight)
            nn.init.zeros_(self.attention.qkv.bias)
            nn.init.zeros_(self.attention.out_proj.bias)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        if self.pre_ln:
            x = x + self.dropout(self.attention(self.attn_layer_norm(x), key_mask))
            return x + self.dropout(self.feed_forward(self.final_layer_norm(x)))
        x = self.attn_layer_norm(x + self.dropout(self.attention(x, key_mask)))
        return self.final_layer_norm(x + self.dropout(self.feed_forward(x)))


class TransformerEncoder(nn.Module):
    """Positional conv + transformer layers, with LayerDrop that keeps DDP working: a dropped layer
    still takes part in the graph with a zero contribution, so every parameter gets a gradient."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.pre_ln = cfg.layer_norm_first
        self.pos_conv = PositionalConvEmbedding(cfg)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout if cfg.dropout_after_pos_conv else 0.0)
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.num_layers))
        for layer in self.layers:
            layer.init_weights(cfg.weight_init)
        self.layerdrop = cfg.layerdrop

    def forward(
        self,
        x: torch.Tensor,
        padding_mask: torch.Tensor | None,
        *,
        output_hidden_states: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x: (batch, frames, hidden); padding_mask: (batch, frames) True = padding.

        Returns the output and, if asked, the hidden states in `transformers`' convention: the
        transformer's input (after the positional embedding, and its LayerNorm for post-LN) and every
        layer's output (for pre-LN, before the final LayerNorm, as transformers >= 5 reports them).
        """
        key_mask = None
        if padding_mask is not None:
            x = x.masked_fill(padding_mask[..., None], 0.0)
            key_mask = ~padding_mask
        x = x + self.pos_conv(x)
        if not self.pre_ln:
            x = self.layer_norm(x)
        x = self.dropout(x)
        hidden: list[torch.Tensor] = [x] if output_hidden_states else []
        drops = None
        if self.training and self.layerdrop > 0:
            # drawn where the generator lives: on the host (a CPU generator), deciding costs no device sync
            drops = torch.rand(len(self.layers), generator=generator, device=generator.device if generator else None)
            drops = (drops < self.layerdrop).tolist()
        for i, layer in enumerate(self.layers):
            if drops is not None and drops[i]:
                x = x + 0.0 * sum(p.sum() for p in layer.parameters())  # keep DDP's reducer complete
            else:
                x = layer(x, key_mask)
            if output_hidden_states:
                hidden.append(x)
        if self.pre_ln:
            x = self.layer_norm(x)  # the returned output; hidden states keep the raw layer outputs
        return x, hidden


# --------------------------------------------------------------------------------------------------
# Quantizer
# --------------------------------------------------------------------------------------------------
class GumbelQuantizer(nn.Module):
    """Product quantizer: G groups × V codewords; straight-through hard Gumbel-softmax in training,
    argmax in eval. Returns the quantized vectors, the code indices and the softmax marginals the
    diversity loss needs."""

    def __init__(self, cfg: ModelConfig, input_dim: int) -> None:
        super().__init__()
        self.groups = cfg.num_codevector_groups
        self.num_vars = cfg.num_codevectors_per_group
        self.weight_proj = nn.Linear(input_dim, self.groups * self.num_vars)
        nn.init.normal_(self.weight_proj.weight, mean=0.0, std=1.0)
        nn.init.zeros_(self.weight_proj.bias)
        self.codevectors = nn.Parameter(
            torch.empty(1, self.groups * self.num_vars, cfg.codevector_dim // self.groups).uniform_()
        )
        self.temperature = cfg.temperature_start

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (n, input_dim) → quantized (n, codevector_dim), codes (n, G) long, soft probs (n, G, V)."""
        n = x.shape[0]
        logits = self.weight_proj(x).float().view(n, self.groups, self.num_vars)  # (n, G, V)
        soft = torch.softmax(logits, dim=-1)
        codes = logits.argmax(dim=-1)  # (n, G)
        if self.training:
            u = torch.rand(logits.shape, device=logits.device, generator=generator)
            gumbel = -torch.log((-torch.log(u.clamp_min(1e-10))).clamp_min(1e-10))
            y_soft = torch.softmax((logits + gumbel) / self.temperature, dim=-1)
            codes = y_soft.argmax(dim=-1)
            hard = F.one_hot(codes, self.num_vars).to(y_soft.dtype)
            onehot = hard - y_soft.detach() + y_soft  # straight-through
        else:
            onehot = F.one_hot(codes, self.num_vars).to(logits.dtype)
        onehot = onehot.to(self.codevectors.dtype).reshape(n, self.groups * self.num_vars)
        # select one codeword per group: (n, G, V) × (G, V, d) → (n, G, d)
        book = self.codevectors.view(self.groups, self.num_vars, -1)
        q = torch.einsum("ngv,gvd->ngd", onehot.view(n, self.groups, self.num_vars), book)
        return q.flatten(1), codes, soft
