"""Independent numerical reference of the RELEASED UnityVideo two-stream DiT, for tests only.

This is a plain-PyTorch (fp32, torch + math only) re-statement of the released model
("UnifiedWanModel" wrapping a Wan2.2 "WanModel") written from the released model's description
(its architecture, checkpoint keys, modality prompts and flow-matching convention, in the authors'
layout) and the original Wan math conventions. It does not import or mirror the implementation under test: it is the
yardstick the tests compare against. Parameters use the ORIGINAL checkpoint key layout:
Wan keys under ``base.``; ``flow_patch_embedding``, ``flow_in``, ``modality_embeddings.<name>``
and ``flow_head.{head,modulation}`` at the top level. No buffers appear in ``state_dict()``.

Not optimised; meant for tiny configs (e.g. dim 48, 2 heads, 2 layers).
"""

import math

import torch
from torch import nn


__all__ = ["ReferenceUnifiedWan", "randomize_", "sinusoidal_embedding", "rope_table"]


# ----------------------------------------------------------------------------- helpers
def sinusoidal_embedding(freq_dim, timestep):
    """(b,) -> (b, freq_dim) float32; computed in float64: cat[cos(t*f), sin(t*f)]."""
    half = freq_dim // 2
    t = timestep.to(torch.float64).reshape(-1)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    args = t[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1).to(torch.float32)


def _rope_1d(n, positions):
    """complex128 (len(positions), n//2): exp(i * pos * inv_freq), inv_freq = 1/10000^(2j/n)."""
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, n, 2, dtype=torch.float64)[: n // 2] / n))
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]
    return torch.polar(torch.ones_like(angles), angles)


def rope_table(head_dim, f, h, w):
    """complex128 (f*h*w, head_dim//2) for a row-major (f, h, w) grid.

    head_dim is split (original Wan / DiffSynth) as f-part d - 2*(d//3), h-part d//3, w-part d//3;
    the three complex tables are concatenated [f | h | w] along the last axis.
    """
    d3 = head_dim // 3
    df = head_dim - 2 * d3
    tf = _rope_1d(df, torch.arange(f))[:, None, None, :].expand(f, h, w, -1)
    th = _rope_1d(d3, torch.arange(h))[None, :, None, :].expand(f, h, w, -1)
    tw = _rope_1d(d3, torch.arange(w))[None, None, :, :].expand(f, h, w, -1)
    return torch.cat([tf, th, tw], dim=-1).reshape(f * h * w, -1)


def apply_rope(x, table, num_heads):
    """x (b, s, dim) real; consecutive pairs (x[2j], x[2j+1]) of each head form complex numbers."""
    b, s, dim = x.shape
    xc = torch.view_as_complex(x.to(torch.float64).reshape(b, s, num_heads, -1, 2).contiguous())
    out = xc * table.to(x.device)[None, :, None, :]
    return torch.view_as_real(out).reshape(b, s, dim).to(x.dtype)


def attention(q, k, v, num_heads):
    """Plain softmax(q k^T / sqrt(d)) v per head; q (b, s, dim), k/v (b, l, dim)."""
    b, s, dim = q.shape
    d = dim // num_heads
    q = q.reshape(b, s, num_heads, d).transpose(1, 2)
    k = k.reshape(b, k.shape[1], num_heads, d).transpose(1, 2)
    v = v.reshape(b, v.shape[1], num_heads, d).transpose(1, 2)
    weights = torch.softmax((q @ k.transpose(-1, -2)) / math.sqrt(d), dim=-1)
    return (weights @ v).transpose(1, 2).reshape(b, s, dim)


def layer_norm_no_affine(x, eps):
    return nn.functional.layer_norm(x, (x.shape[-1],), eps=eps)


# ----------------------------------------------------------------------------- modules
class RMSNorm(nn.Module):
    """RMSNorm over the whole last dim, computed in float, then times weight."""

    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight


class Attention(nn.Module):
    """q, k, v, o Linears (with bias) and RMSNorm on q and k; RoPE only if a table is given."""

    def __init__(self, dim, num_heads, eps):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)

    def forward(self, x, ctx, rope=None):
        q = self.norm_q(self.q(x))
        k = self.norm_k(self.k(ctx))
        v = self.v(ctx)
        if rope is not None:
            q = apply_rope(q, rope, self.num_heads)
            k = apply_rope(k, rope, self.num_heads)
        return self.o(attention(q, k, v, self.num_heads))


class Block(nn.Module):
    def __init__(self, dim, num_heads, ffn_dim, eps):
        super().__init__()
        self.eps = eps
        self.self_attn = Attention(dim, num_heads, eps)
        self.cross_attn = Attention(dim, num_heads, eps)
        self.norm3 = nn.LayerNorm(dim, eps=eps)  # affine; norm1/norm2 have no parameters
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))
        self.modulation = nn.Parameter(torch.zeros(1, 6, dim))

    def forward(self, x, grid, ctx_rgb, ctx_mod, t_mod, rope):
        """x: joint sequence (b, f*h*2w, dim) in row-major (f, h, 2w) order; grid = (f, h, w)."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (self.modulation + t_mod).chunk(
            6, dim=1
        )  # each (b, 1, dim)

        y = layer_norm_no_affine(x, self.eps) * (1 + scale_msa) + shift_msa
        x = x + gate_msa * self.self_attn(y, y, rope)

        rgb, mod = split_streams(x, grid)
        rgb = rgb + self.cross_attn(self.norm3(rgb), ctx_rgb)
        mod = mod + self.cross_attn(self.norm3(mod), ctx_mod)
        x = merge_streams(rgb, mod, grid)

        y = layer_norm_no_affine(x, self.eps) * (1 + scale_mlp) + shift_mlp
        return x + gate_mlp * self.ffn(y)


class Head(nn.Module):
    """Wan output head: modulation [1, 2, dim] + per-sample t -> (shift, scale); Linear."""

    def __init__(self, dim, out_channels, patch_size, eps):
        super().__init__()
        self.eps = eps
        self.head = nn.Linear(dim, out_channels * math.prod(patch_size))
        self.modulation = nn.Parameter(torch.zeros(1, 2, dim))

    def forward(self, x, t):
        shift, scale = (self.modulation + t.unsqueeze(1)).chunk(2, dim=1)  # each (b, 1, dim)
        return self.head(layer_norm_no_affine(x, self.eps) * (1 + scale) + shift)


class WanBase(nn.Module):
    """Parameter container with the original Wan key layout (used as ``base``)."""

    def __init__(
        self, dim, num_heads, num_layers, ffn_dim, in_channels, out_channels, text_dim, freq_dim, patch_size, eps
    ):
        super().__init__()
        self.patch_embedding = nn.Conv3d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList([Block(dim, num_heads, ffn_dim, eps) for _ in range(num_layers)])
        self.head = Head(dim, out_channels, patch_size, eps)


# ----------------------------------------------------------------------------- stream layout
def split_streams(x, grid):
    """(b, f*h*2w, dim) -> RGB (columns 0..w-1), modality (columns w..2w-1), each (b, f*h*w, dim)."""
    f, h, w = grid
    b, _, dim = x.shape
    g = x.reshape(b, f, h, 2 * w, dim)
    return g[:, :, :, :w].reshape(b, f * h * w, dim), g[:, :, :, w:].reshape(b, f * h * w, dim)


def merge_streams(rgb, mod, grid):
    """Inverse of split_streams: width-concatenate and flatten row-major (f, h, 2w)."""
    f, h, w = grid
    b, _, dim = rgb.shape
    g = torch.cat([rgb.reshape(b, f, h, w, dim), mod.reshape(b, f, h, w, dim)], dim=3)
    return g.reshape(b, f * h * 2 * w, dim)


# ----------------------------------------------------------------------------- the model
class ReferenceUnifiedWan(nn.Module):
    def __init__(
        self,
        dim,
        num_heads,
        num_layers,
        ffn_dim,
        in_channels,
        out_channels,
        text_dim,
        freq_dim,
        patch_size=(1, 2, 2),
        eps=1e-6,
        modalities=("depth", "raft", "segmentation", "skeleton", "densepose"),
    ):
        super().__init__()
        assert dim % num_heads == 0 and (dim // num_heads) % 2 == 0
        self.dim = dim
        self.num_heads = num_heads
        self.freq_dim = freq_dim
        self.out_channels = out_channels
        self.patch_size = tuple(patch_size)
        self.base = WanBase(
            dim, num_heads, num_layers, ffn_dim, in_channels, out_channels, text_dim, freq_dim, self.patch_size, eps
        )
        self.flow_patch_embedding = nn.Conv3d(in_channels, dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.flow_in = nn.Linear(dim, dim)
        self.modality_embeddings = nn.ParameterDict({m: nn.Parameter(torch.zeros(dim)) for m in modalities})
        self.flow_head = Head(dim, out_channels, self.patch_size, eps)
        # "init" as the authors describe it; randomize_ overwrites everything anyway
        with torch.no_grad():
            self.flow_patch_embedding.load_state_dict(self.base.patch_embedding.state_dict())
            self.flow_head.load_state_dict(self.base.head.state_dict())
            self.flow_in.weight.zero_()
            self.flow_in.bias.zero_()

    @staticmethod
    def _to_grid(conv_out):
        """Conv3d output (b, dim, f, h, w) -> (b, f, h, w, dim)."""
        return conv_out.permute(0, 2, 3, 4, 1)

    def _unpatchify(self, tokens, grid):
        """(b, f*h*w, pt*ph*pw*c) with values ordered (pt, ph, pw, c) -> (b, c, f*pt, h*ph, w*pw)."""
        f, h, w = grid
        pt, ph, pw = self.patch_size
        c = self.out_channels
        b = tokens.shape[0]
        x = tokens.reshape(b, f, h, w, pt, ph, pw, c)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # b, c, f, pt, h, ph, w, pw
        return x.reshape(b, c, f * pt, h * ph, w * pw)

    def forward(self, rgb_latent, modality_latent, timestep, context, context_modality=None, modality=None):
        base = self.base
        b = rgb_latent.shape[0]
        timestep = torch.as_tensor(timestep, device=rgb_latent.device).reshape(-1)
        if timestep.numel() == 1 and b > 1:
            timestep = timestep.expand(b)

        # 1. time (shared by both streams)
        t = base.time_embedding(sinusoidal_embedding(self.freq_dim, timestep).to(rgb_latent.device))
        t_mod = base.time_projection(t).unflatten(1, (6, self.dim))  # (b, 6, dim)

        # 2. text (no mask); the RGB context serves both streams when none is given
        ctx_rgb = base.text_embedding(context)
        ctx_mod = ctx_rgb if context_modality is None else base.text_embedding(context_modality)

        # 3. tokens
        rgb = self._to_grid(base.patch_embedding(rgb_latent))  # (b, f, h, w, dim)
        mod = self.flow_in(self._to_grid(self.flow_patch_embedding(modality_latent)))  # replaces
        if modality is not None:
            if modality not in self.modality_embeddings:
                raise ValueError(f"unknown modality {modality!r}; known: {list(self.modality_embeddings.keys())}")
            mod = mod + self.modality_embeddings[modality]
        assert rgb.shape == mod.shape, (rgb.shape, mod.shape)
        _, f, h, w, _ = rgb.shape
        grid = (f, h, w)

        # 4. joint (f, h, 2w) sequence and its RoPE table
        x = torch.cat([rgb, mod], dim=3).reshape(b, f * h * 2 * w, self.dim)
        rope = rope_table(self.dim // self.num_heads, f, h, 2 * w)

        # 5. blocks
        for block in base.blocks:
            x = block(x, grid, ctx_rgb, ctx_mod, t_mod, rope)

        # 6. heads and unpatchify
        rgb_tok, mod_tok = split_streams(x, grid)
        v_rgb = self._unpatchify(base.head(rgb_tok, t), grid)
        v_mod = self._unpatchify(self.flow_head(mod_tok, t), grid)
        return v_rgb, v_mod


def randomize_(model, seed):
    """Fill EVERY parameter with seeded random values of sensible scale (in place).

    Linear/Conv weights: normal / sqrt(fan_in); biases: normal * 0.1; RMSNorm / LayerNorm
    weights: 1 + normal * 0.1; modulation tables and modality embeddings: normal * 0.2.
    """
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            leaf = name.rsplit(".", 1)[-1]
            if "norm" in name and leaf == "weight":
                val = 1.0 + 0.1 * noise
            elif leaf == "bias":
                val = 0.1 * noise
            elif leaf == "weight":  # Linear (out, in) or Conv3d (out, in, kt, kh, kw)
                val = noise / math.sqrt(p[0].numel())
            else:  # modulation tables, modality embeddings
                val = 0.2 * noise
            p.copy_(val.to(p.dtype))
    return model
