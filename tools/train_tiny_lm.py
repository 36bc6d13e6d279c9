"""Train a small byte-level Mamba-1 or Mamba-2 LM on CPU and save it as a transformers-format
folder (config.json + model.safetensors) that ssmgpu loads.

Corpus: the licence texts Debian's base-files package ships in /usr/share/common-licenses
(verbatim copying of these texts is permitted by each of them). Apache-2.0 is held out for
evaluation; every other regular file trains.

    python3 tools/train_tiny_lm.py mamba  assets/models/mamba1-licenses --minutes 12
    python3 tools/train_tiny_lm.py mamba2 assets/models/mamba2-licenses --minutes 12

The forward pass follows transformers' MambaForCausalLM / Mamba2ForCausalLM torch paths
(pre-norm residual blocks, RMSNorm, tied head), written out here so that only torch and
safetensors are needed.
"""

import argparse, json, math, os, time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

HELD_OUT = "Apache-2.0"


def corpus():
    root = Path("/usr/share/common-licenses")
    files = sorted(p for p in root.iterdir() if p.is_file() and not p.is_symlink() and p.name != HELD_OUT)
    return b"\n\n".join(p.read_bytes() for p in files)


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def causal_conv(conv, x):
    # x [B, L, C] -> depthwise causal conv (width 4) over L.
    L = x.shape[1]
    return conv(x.transpose(1, 2))[..., :L].transpose(1, 2)


class Mamba1Mixer(nn.Module):
    def __init__(self, d, e, n, r):
        super().__init__()
        self.e, self.n, self.r = e, n, r
        self.in_proj = nn.Linear(d, 2 * e, bias=False)
        self.conv1d = nn.Conv1d(e, e, 4, groups=e, padding=3)
        self.x_proj = nn.Linear(e, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, e)
        dt = torch.exp(torch.rand(e) * (math.log(0.1) - math.log(0.001)) + math.log(0.001))
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1).float()).repeat(e, 1))
        self.D = nn.Parameter(torch.ones(e))
        self.out_proj = nn.Linear(e, d, bias=False)

    def forward(self, h):
        x, z = self.in_proj(h).chunk(2, dim=-1)
        u = F.silu(causal_conv(self.conv1d, x))
        dt, B, C = self.x_proj(u).split([self.r, self.n, self.n], dim=-1)
        dt = F.softplus(self.dt_proj(dt))  # [B, L, E]
        A = -torch.exp(self.A_log)  # [E, N]
        dA = torch.exp(dt.unsqueeze(-1) * A)  # [B, L, E, N]
        dBu = (dt * u).unsqueeze(-1) * B.unsqueeze(2)  # [B, L, E, N]
        s = torch.zeros_like(dA[:, 0])
        ys = []
        # unbind once: indexing per step would make autograd allocate a full-size gradient each step.
        for a, bu, c in zip(dA.unbind(1), dBu.unbind(1), C.unsqueeze(2).unbind(1)):
            s = a * s + bu
            ys.append((s * c).sum(-1))
        y = torch.stack(ys, 1) + u * self.D
        return self.out_proj(y * F.silu(z))


class Mamba2Mixer(nn.Module):
    def __init__(self, d, e, n, headdim, groups):
        super().__init__()
        self.e, self.n, self.g, self.h, self.p = e, n, groups, e // headdim, headdim
        conv = e + 2 * groups * n
        self.in_proj = nn.Linear(d, e + conv + self.h, bias=False)
        self.conv1d = nn.Conv1d(conv, conv, 4, groups=conv, padding=3)
        dt = torch.exp(torch.rand(self.h) * (math.log(0.1) - math.log(0.001)) + math.log(0.001))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.empty(self.h).uniform_(1, 16)))
        self.D = nn.Parameter(torch.ones(self.h))
        self.norm = nn.Parameter(torch.ones(e))  # saved as norm.weight
        self.out_proj = nn.Linear(e, d, bias=False)

    def forward(self, h):
        Bt, L, _ = h.shape
        gn = self.g * self.n
        z, xbc, dt = self.in_proj(h).split([self.e, self.e + 2 * gn, self.h], dim=-1)
        xbc = F.silu(causal_conv(self.conv1d, xbc))
        x, B, C = xbc.split([self.e, gn, gn], dim=-1)
        dt = F.softplus(dt + self.dt_bias)  # [B, L, H]
        A = -torch.exp(self.A_log)
        x = x.view(Bt, L, self.h, self.p)
        rep = self.h // self.g
        B = B.view(Bt, L, self.g, self.n).repeat_interleave(rep, 2)  # [B, L, H, N]
        C = C.view(Bt, L, self.g, self.n).repeat_interleave(rep, 2)
        cum = torch.cumsum(dt * A, 1).transpose(1, 2)  # [B, H, L]
        seg = cum.unsqueeze(-1) - cum.unsqueeze(-2)  # [B, H, L(i), L(j)]
        mask = torch.tril(torch.ones(L, L, dtype=torch.bool))
        decay = torch.exp(seg.masked_fill(~mask, -float("inf")))
        cb = torch.einsum("bihn,bjhn->bhij", C, B)
        y = torch.einsum("bhij,bjh,bjhp->bihp", cb * decay, dt, x)
        y = (y + x * self.D[:, None]).reshape(Bt, L, self.e)
        g = y * F.silu(z)
        gg = g.view(Bt, L, self.g, -1)
        gg = gg * torch.rsqrt(gg.pow(2).mean(-1, keepdim=True) + 1e-5)
        return self.out_proj(gg.reshape(Bt, L, self.e) * self.norm)


class Lm(nn.Module):
    def __init__(self, kind, d, layers, vocab=256):
        super().__init__()
        self.embeddings = nn.Embedding(vocab, d)
        nn.init.normal_(self.embeddings.weight, std=0.02)
        if kind == "mamba":
            make = lambda: Mamba1Mixer(d, 2 * d, 16, math.ceil(d / 16))
        else:
            make = lambda: Mamba2Mixer(d, 2 * d, 32, 32, 1)
        self.mixers = nn.ModuleList(make() for _ in range(layers))
        self.norms = nn.ModuleList(RMSNorm(d) for _ in range(layers))
        self.norm_f = RMSNorm(d)

    def forward(self, ids):
        residual = self.embeddings(ids)
        for norm, mixer in zip(self.norms, self.mixers):
            residual = residual + mixer(norm(residual))
        return self.norm_f(residual) @ self.embeddings.weight.T

    def state_dict_hf(self):
        out = {"backbone.embeddings.weight": self.embeddings.weight, "backbone.norm_f.weight": self.norm_f.weight}
        for i, (norm, mixer) in enumerate(zip(self.norms, self.mixers)):
            out[f"backbone.layers.{i}.norm.weight"] = norm.weight
            for k, v in mixer.state_dict().items():
                out[f"backbone.layers.{i}.mixer.{'norm.weight' if k == 'norm' else k}"] = v
        return {k: v.detach().float().contiguous().clone() for k, v in out.items()}


def config(kind, d, layers):
    common = dict(hidden_size=d, num_hidden_layers=layers, vocab_size=256, expand=2, layer_norm_epsilon=1e-5,
                  use_bias=False, use_conv_bias=True, tie_word_embeddings=True, conv_kernel=4,
                  bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if kind == "mamba":
        return dict(common, model_type="mamba", architectures=["MambaForCausalLM"], intermediate_size=2 * d,
                    state_size=16, time_step_rank=math.ceil(d / 16))
    return dict(common, model_type="mamba2", architectures=["Mamba2ForCausalLM"], head_dim=32, num_heads=2 * d // 32,
                n_groups=1, state_size=32, chunk_size=64, time_step_limit=[0.0, {"__float__": "Infinity"}])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["mamba", "mamba2"])
    ap.add_argument("out")
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--minutes", type=float, default=12)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    data = torch.tensor(list(corpus()), dtype=torch.long)
    model = Lm(args.kind, args.d_model, args.layers)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    start, step, budget = time.time(), 0, args.minutes * 60
    while (elapsed := time.time() - start) < budget:
        lr = 3e-3 * min(1.0, (step + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * elapsed / budget)))
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, len(data) - args.seq - 1, (args.batch,))
        batch = torch.stack([data[s : s + args.seq + 1] for s in starts])
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 256), batch[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0:
            print(f"step {step} {elapsed:.0f}s loss {loss.item():.3f}", flush=True)
        step += 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config(args.kind, args.d_model, args.layers), indent=2) + "\n")
    save_file(model.state_dict_hf(), str(out / "model.safetensors"))
    held = torch.tensor(list(Path("/usr/share/common-licenses", HELD_OUT).read_bytes()[:2049]), dtype=torch.long)
    with torch.no_grad():
        nll = F.cross_entropy(model(held[None, :-1])[0], held[1:])
    print(f"done: {step} steps, held-out {HELD_OUT} ppl {math.exp(nll.item()):.3f} (first 2048 bytes)")


if __name__ == "__main__":
    main()
