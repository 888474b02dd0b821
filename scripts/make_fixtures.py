#!/usr/bin/env python3
"""Produce the reference fixtures that the Rust tests of `tttnn` compare against.

Run from the repository root (takes about a minute on two CPU cores):

    ~/.cache/tttnn/refenv/bin/python scripts/make_fixtures.py            # everything
    ~/.cache/tttnn/refenv/bin/python scripts/make_fixtures.py lm ttt      # only some parts

Parts: `lm` (tiny random HF models + expected.json), `ttt` (TTT-NN curve on the tiny
gpt2, needs `lm` first), `tokenizer` (GPT-2 BPE ids), `smollm2` (real SmolLM2-135M GGUF).

Environment: the venv at ~/.cache/tttnn/refenv; exact versions are pinned in
scripts/requirements-fixtures.txt (torch CPU, transformers, gguf, accelerate -- the
last two are needed by transformers to load a GGUF file). Assets (see
scripts/fetch_assets.sh): ~/.cache/tttnn/smollm2-135m.gguf and
~/.cache/tttnn/gpt2-tokenizer/{encoder.json,vocab.bpe}. Override the asset folder with
TTTNN_CACHE=/some/dir.

Conventions (all parts):
  * float32 everywhere, fixed seeds, torch.set_num_threads(1), deterministic algorithms.
  * every model is built with attn_implementation="eager" and every dropout probability 0
    in its config; models are in eval() mode for scoring and train() mode for steps
    (identical here, since all dropouts are 0).
  * "vocab_limit" V = vocab_size - 3: scoring log-softmax uses logits[..., :V] only
    (lm-eval-harness ignores padded logits beyond the tokenizer's real vocabulary).
    Training losses use the full vocabulary (Hugging Face `labels=input_ids`).
  * rolling log-likelihood = lm-eval-harness `loglikelihood_rolling` with
    get_rolling_token_windows(ids, prefix_token, max_seq_len=context_length,
    context_len=1) and make_disjoint_window, ported verbatim below.
  * training step = AdamW(model.parameters(), lr, betas, eps, weight_decay) in one
    parameter group (tied weights counted once), loss.backward(),
    clip_grad_norm_(params, 1.0) (its return value = pre-clip total L2 norm is
    recorded), optimizer.step(), optimizer.zero_grad().
  * pad_token_id is None in every tiny config, so no embedding row is a frozen
    padding_idx row.
"""

import json
import math
import os
import random
import shutil
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

import transformers  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoConfig,
    GPTNeoForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "fixtures"
CACHE = Path(os.environ.get("TTTNN_CACHE", Path.home() / ".cache" / "tttnn"))

VOCAB = 101
V = VOCAB - 3  # vocab_limit
PREFIX = V - 1
CTX = 32  # max_position_embeddings of every tiny model, and the scoring context length

TRAIN_HP = dict(lr=1e-3, betas=[0.9, 0.999], eps=1e-8, weight_decay=0.01, max_grad_norm=1.0)


# --------------------------------------------------------------------------------------
# lm-eval-harness rolling windows (lm_eval/utils.py), ported verbatim
# --------------------------------------------------------------------------------------
def get_rolling_token_windows(token_list, prefix_token, max_seq_len, context_len):
    assert 1 <= context_len <= max_seq_len
    if not token_list:
        return
    # +1 offset, going from input->preds
    pred_len = max_seq_len - context_len + 1
    predicted = 0

    # Special handling for first window: predict all tokens
    first_seq_len = min(max_seq_len, len(token_list))
    yield [prefix_token] + token_list[: first_seq_len - 1], token_list[:first_seq_len]
    predicted += first_seq_len

    while predicted < len(token_list):
        window_pred_len = min(len(token_list) - predicted, pred_len)
        window_end = predicted + window_pred_len

        yield (
            token_list[window_end - max_seq_len - 1 : window_end - 1],
            token_list[window_end - window_pred_len : window_end],
        )
        predicted += window_pred_len


def make_disjoint_window(pair):
    a, b = pair
    return a[: len(a) - (len(b) - 1)], b


@torch.no_grad()
def rolling_loglikelihood(model, ids, context_length, prefix_token, vocab_limit):
    """Returns (token_logprobs, windows). HFLM._loglikelihood_tokens, batch size 1."""
    model.eval()
    token_lp, windows = [], []
    for ctx, cont in map(
        make_disjoint_window,
        get_rolling_token_windows(ids, prefix_token, context_length, 1),
    ):
        inp = (ctx + cont)[-(context_length + 1) :][:-1]
        logits = model(torch.tensor([inp])).logits[0, :, :vocab_limit].float()
        lp = torch.log_softmax(logits, dim=-1)
        n = len(cont)
        sel = lp[len(inp) - n :].gather(1, torch.tensor(cont)[:, None])[:, 0]
        token_lp += [float(x) for x in sel]
        windows.append({"input": inp, "n_pred": n})
    assert len(token_lp) == len(ids)
    return token_lp, windows


@torch.no_grad()
def one_pass_logprobs(model, ids, vocab_limit):
    model.eval()
    logits = model(torch.tensor([ids])).logits[0, :, :vocab_limit].float()
    lp = torch.log_softmax(logits, dim=-1)
    return [float(lp[i - 1, ids[i]]) for i in range(1, len(ids))]


def make_optimizer(model):
    return torch.optim.AdamW(
        model.parameters(),
        lr=TRAIN_HP["lr"],
        betas=tuple(TRAIN_HP["betas"]),
        eps=TRAIN_HP["eps"],
        weight_decay=TRAIN_HP["weight_decay"],
    )


def train_step(model, opt, ids):
    """One optimizer step on one sequence; returns (loss before update, pre-clip norm)."""
    model.train()
    x = torch.tensor([ids])
    out = model(input_ids=x, labels=x)
    # sanity: HF loss == mean CE over the n-1 predicted positions, full vocabulary
    ref = torch.nn.functional.cross_entropy(out.logits[0, :-1].float(), x[0, 1:])
    assert abs(float(out.loss) - float(ref)) < 1e-5, (float(out.loss), float(ref))
    out.loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), TRAIN_HP["max_grad_norm"])
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(out.loss), float(norm)


@torch.no_grad()
def eval_loss(model, ids):
    model.train()  # same as eval: no dropout anywhere
    x = torch.tensor([ids])
    return float(model(input_ids=x, labels=x).loss)


def dump(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")


# --------------------------------------------------------------------------------------
# 1. tiny random models
# --------------------------------------------------------------------------------------
COMMON = dict(
    vocab_size=VOCAB,
    attn_implementation="eager",
    dtype="float32",
    pad_token_id=None,
    bos_token_id=0,
    eos_token_id=0,
    initializer_range=0.1,  # larger than 0.02 so logits/attention are far from uniform
)


def tiny_configs():
    return {
        "gpt2": (
            GPT2LMHeadModel,
            GPT2Config(
                n_positions=CTX, n_embd=48, n_layer=2, n_head=4, n_inner=None,
                activation_function="gelu_new", layer_norm_epsilon=1e-5,
                resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0,
                tie_word_embeddings=True, **COMMON,
            ),
        ),
        "gpt_neo": (
            GPTNeoForCausalLM,
            GPTNeoConfig(
                max_position_embeddings=CTX, hidden_size=48, num_layers=2, num_heads=4,
                attention_types=[[["global", "local"], 1]], window_size=8,
                intermediate_size=None, activation_function="gelu_new", layer_norm_epsilon=1e-5,
                embed_dropout=0.0, attention_dropout=0.0, resid_dropout=0.0,
                classifier_dropout=0.0, tie_word_embeddings=True, **COMMON,
            ),
        ),
        "llama": (
            LlamaForCausalLM,
            LlamaConfig(
                hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, hidden_act="silu",
                max_position_embeddings=CTX, rms_norm_eps=1e-5,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                attention_bias=False, mlp_bias=False, attention_dropout=0.0,
                tie_word_embeddings=False, **COMMON,
            ),
        ),
        "qwen2": (
            Qwen2ForCausalLM,
            Qwen2Config(
                hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, hidden_act="silu",
                max_position_embeddings=CTX, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                use_sliding_window=False, attention_dropout=0.0,
                tie_word_embeddings=True, **COMMON,
            ),
        ),
        "gemma3": (
            Gemma3ForCausalLM,
            Gemma3TextConfig(
                hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                hidden_activation="gelu_pytorch_tanh", max_position_embeddings=CTX,
                rms_norm_eps=1e-6, query_pre_attn_scalar=24, sliding_window=8,
                layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                rope_parameters={
                    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                    "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                },
                final_logit_softcapping=None, attn_logit_softcapping=None,
                attention_bias=False, attention_dropout=0.0,
                tie_word_embeddings=True, **COMMON,
            ),
        ),
    }


@torch.no_grad()
def perturb(model, gen):
    """Make biases and norm weights non-trivial (HF inits them to 0 / 1 / 0-for-(1+w))."""
    done = set()
    for mod_name, mod in model.named_modules():
        if "norm" in type(mod).__name__.lower():
            for pn, p in mod.named_parameters(recurse=False):
                p.add_(torch.randn(p.shape, generator=gen) * (0.2 if pn == "weight" else 0.1))
                done.add(f"{mod_name}.{pn}")
    for name, p in model.named_parameters():
        if name.endswith("bias") and name not in done:
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)


def build_lm(name, cls, cfg, seed):
    torch.manual_seed(seed)
    model = cls(cfg).float()
    gen = torch.Generator().manual_seed(seed + 1)
    perturb(model, gen)
    d = FIX / "lm" / name
    if d.exists():
        shutil.rmtree(d)
    model.save_pretrained(d)
    files = sorted(os.listdir(d))
    assert "model.safetensors" in files and "config.json" in files, files
    for extra in files:
        if extra not in ("config.json", "model.safetensors"):
            os.remove(d / extra)  # e.g. generation_config.json
    return d


def load_lm(d):
    m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    m.float()
    return m


def make_lm():
    rng = random.Random(1234)
    for i, (name, (cls, cfg)) in enumerate(tiny_configs().items()):
        d = build_lm(name, cls, cfg, seed=100 + i)
        model = load_lm(d)  # the fixture describes what is on disk
        # round trip check
        from safetensors.torch import load_file

        sd = load_file(d / "model.safetensors")
        for k, t in sd.items():
            assert t.dtype == torch.float32, (k, t.dtype)
        mtype = model.config.model_type

        seqs = []
        for n in (5, 17, 32):
            ids = [rng.randrange(V) for _ in range(n)]
            lp = one_pass_logprobs(model, ids, V)
            assert all(x < 0 for x in lp)
            seqs.append({"ids": ids, "logprobs": lp})

        rids = [rng.randrange(V) for _ in range(75)]
        tlp, windows = rolling_loglikelihood(model, rids, CTX, PREFIX, V)
        assert [w["n_pred"] for w in windows] == [32, 32, 11], windows
        # rolling's first window equals the one-pass log-probs with prefix prepended
        first = one_pass_logprobs(model, [PREFIX] + rids[:31], V)
        assert max(abs(a - b) for a, b in zip(first, tlp[:32])) < 1e-5
        rolling = {
            "ids": rids, "context_length": CTX, "prefix_token": PREFIX,
            "token_logprobs": tlp, "loglikelihood": float(sum(tlp)), "windows": windows,
        }

        tids = [rng.randrange(V) for _ in range(24)]
        tm = load_lm(d)
        opt = make_optimizer(tm)
        l0, g1 = train_step(tm, opt, tids)
        l1, g2 = train_step(tm, opt, tids)
        l2 = eval_loss(tm, tids)
        assert l1 < l0 and l2 < l1, (name, l0, l1, l2)
        assert g1 > 0 and g2 > 0
        n_params = sum(p.numel() for p in tm.parameters())
        train = {"ids": tids, **TRAIN_HP, "losses": [l0, l1, l2], "grad_norms": [g1, g2],
                 "n_params": n_params}

        exp = {
            "arch": mtype,
            "architecture": type(model).__name__,
            "vocab_size": VOCAB,
            "vocab_limit": V,
            "sequences": seqs,
            "rolling": rolling,
            "train": train,
        }
        dump(d / "expected.json", exp)
        print(f"[lm] {name:8s} type={mtype:12s} params={n_params:7d} "
              f"rollingLL={rolling['loglikelihood']:.4f} losses={l0:.4f},{l1:.4f},{l2:.4f} "
              f"norms={g1:.3f},{g2:.3f}")


# --------------------------------------------------------------------------------------
# 2. TTT-NN curve on the tiny gpt2
# --------------------------------------------------------------------------------------
def make_ttt():
    d = FIX / "lm" / "gpt2"
    model = load_lm(d)
    rng = random.Random(777)
    max_length = 16
    test_ids = [rng.randrange(V) for _ in range(40)]
    # neighbor 1: 33 ids -> chunks 16, 16, 1 (the 1-token chunk is skipped)
    neighbors = [[rng.randrange(V) for _ in range(n)] for n in (33, 9, 23)]
    # make the neighbors related to the test document so the curve goes down
    neighbors[0][:20] = test_ids[:20]
    neighbors[2][:15] = test_ids[20:35]

    def score():
        lp, _ = rolling_loglikelihood(model, test_ids, CTX, PREFIX, V)
        return float(sum(lp))

    lls = [score()]
    opt = make_optimizer(model)  # one optimizer for the whole document
    chunk_losses, chunk_norms, chunks = [], [], []
    for nb in neighbors:
        losses, norms, lens = [], [], []
        for s in range(0, len(nb), max_length):
            chunk = nb[s : s + max_length]
            lens.append(len(chunk))
            if len(chunk) < 2:
                continue  # predicts nothing: skipped
            loss, norm = train_step(model, opt, chunk)
            losses.append(loss)
            norms.append(norm)
        chunk_losses.append(losses)
        chunk_norms.append(norms)
        chunks.append(lens)
        lls.append(score())
    assert lls[-1] > lls[0], lls
    out = {
        "model": "fixtures/lm/gpt2",
        "test_ids": test_ids,
        "neighbors": neighbors,
        "max_length": max_length,
        "context_length": CTX,
        "prefix_token": PREFIX,
        "vocab_limit": V,
        **TRAIN_HP,
        "chunk_lengths": chunks,
        "loglikelihoods": lls,
        "chunk_losses": chunk_losses,
        "chunk_grad_norms": chunk_norms,
    }
    dump(FIX / "ttt" / "curve.json", out)
    print(f"[ttt] loglikelihoods={[round(x, 4) for x in lls]} chunk_losses={chunk_losses}")


# --------------------------------------------------------------------------------------
# 3. GPT-2 tokenizer
# --------------------------------------------------------------------------------------
def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class OpenAIEncoder:
    """Port of openai/gpt-2 src/encoder.py (the original, 'slow' algorithm)."""

    def __init__(self, encoder, bpe_merges):
        import regex

        self.encoder = encoder
        self.byte_encoder = bytes_to_unicode()
        self.bpe_ranks = dict(zip(bpe_merges, range(len(bpe_merges))))
        self.pat = regex.compile(
            r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
        )

    def bpe(self, token):
        word = tuple(token)
        pairs = {(a, b) for a, b in zip(word, word[1:])}
        if not pairs:
            return [token]
        while True:
            bigram = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new_word, i = [], 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new_word.extend(word[i:])
                    break
                new_word.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
            if len(word) == 1:
                break
            pairs = {(a, b) for a, b in zip(word, word[1:])}
        return list(word)

    def encode(self, text):
        ids = []
        for tok in self.pat.findall(text):
            tok = "".join(self.byte_encoder[b] for b in tok.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(tok))
        return ids


TOKENIZER_TEXTS = [
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "Café naïve résumé — Zürich, São Paulo; 東京タワー と 北京 🚀🔥👩‍💻 ok",
    "  leading spaces,\ttabs\t\tand\n\nnewlines   \n\t trailing   ",
    "Numbers: 3.14159, 2024-06-01, 1,000,000 and 12345678901234567890; x=-42e-3",
    "def f(x):\n    if x > 0:\n        return x ** 2  # square\n    return None\n\n\tprint(f(3))\n",
    "It's they're we've I'm you'll he'd: 'quoted' \"double\" <b>x</b> ...!?",
]


def make_tokenizer():
    from transformers import GPT2Tokenizer

    tdir = CACHE / "gpt2-tokenizer"
    with open(tdir / "encoder.json", encoding="utf-8") as f:
        encoder = json.load(f)
    with open(tdir / "vocab.bpe", encoding="utf-8") as f:
        merges = [tuple(l.split()) for l in f.read().split("\n")[1:-1]]
    slow = OpenAIEncoder(encoder, merges)
    # transformers 5 has only the tokenizers-backed GPT2Tokenizer; it ignores
    # vocab_file/merges_file kwargs, so the vocab and merges are passed in directly.
    fast = GPT2Tokenizer(vocab=encoder, merges=merges)
    out = []
    for text in TOKENIZER_TEXTS:
        ids = slow.encode(text)
        fids = fast(text, add_special_tokens=False)["input_ids"]
        assert ids == fids, (text, ids, fids)
        assert fast.decode(ids) == text
        out.append({"text": text, "ids": ids})
    dump(FIX / "tokenizer" / "gpt2.json", out)
    print(f"[tokenizer] {len(out)} texts, {sum(len(o['ids']) for o in out)} ids, "
          f"vocab {len(encoder)} merges {len(merges)}")


# --------------------------------------------------------------------------------------
# 4. SmolLM2-135M-Instruct GGUF (Q4_1 / Q8_0), dequantized by transformers
# --------------------------------------------------------------------------------------
SMOL_TEXT = (
    "The quick brown fox jumps over the lazy dog. Test-time training adapts a language "
    "model to each input by fine-tuning it on a few retrieved neighbors. On many domains "
    "this lowers the perplexity substantially."
)
SMOL_TEXT2 = (
    "In 2024, 3.14159 × 12 = 37.69908; see https://example.com/a?b=1.\n"
    "def area(r):\n    return 3.14159 * r ** 2  # café, 東京, naïve 🚀\n"
)


def make_smollm2():
    from transformers import AutoTokenizer

    name = "smollm2-135m.gguf"
    tok = AutoTokenizer.from_pretrained(CACHE, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        CACHE, gguf_file=name, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    cfg = model.config
    ids = tok(SMOL_TEXT, add_special_tokens=False)["input_ids"]
    ids2 = tok(SMOL_TEXT2, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == SMOL_TEXT
    prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    vlim = len(tok)
    with torch.no_grad():
        inp = [prefix] + ids[:-1]
        logits = model(torch.tensor([inp])).logits[0, :, :vlim].float()
        lp = torch.log_softmax(logits, dim=-1)
        tlp = [float(lp[i, ids[i]]) for i in range(len(ids))]
        # next-token distribution after the full text (one more forward)
        last = model(torch.tensor([[prefix] + ids])).logits[0, -1, :vlim].float()
        top = torch.topk(torch.log_softmax(last, -1), 5)
    # the rolling scorer must give the same numbers when the text fits in one window
    rl, _ = rolling_loglikelihood(model, ids, cfg.max_position_embeddings, prefix, vlim)
    assert max(abs(a - b) for a, b in zip(rl, tlp)) < 1e-4
    assert all(x < 0 for x in tlp)
    sd = model.state_dict()
    samples = {
        "model.embed_tokens.weight[0,:8]": sd["model.embed_tokens.weight"][0, :8].tolist(),
        "model.embed_tokens.weight[1000,:8]": sd["model.embed_tokens.weight"][1000, :8].tolist(),
        "model.layers.0.self_attn.q_proj.weight[0,:8]":
            sd["model.layers.0.self_attn.q_proj.weight"][0, :8].tolist(),
        "model.layers.0.self_attn.q_proj.weight[1,:8]":
            sd["model.layers.0.self_attn.q_proj.weight"][1, :8].tolist(),
        "model.layers.0.self_attn.k_proj.weight[1,:8]":
            sd["model.layers.0.self_attn.k_proj.weight"][1, :8].tolist(),
        "model.layers.0.mlp.down_proj.weight[0,:8]":
            sd["model.layers.0.mlp.down_proj.weight"][0, :8].tolist(),
        "model.layers.0.input_layernorm.weight[:8]":
            sd["model.layers.0.input_layernorm.weight"][:8].tolist(),
    }
    out = {
        "gguf_file": name,
        "loader": f"transformers {transformers.__version__} GGUF loader (dequantized to f32)",
        "text": SMOL_TEXT,
        "ids": ids,
        "text2": SMOL_TEXT2,
        "ids2": ids2,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "prefix_token": prefix,
        "vocab_limit": vlim,
        "token_logprobs": tlp,
        "loglikelihood": float(sum(tlp)),
        "next_token_top5": {"ids": top.indices.tolist(), "logprobs": top.values.tolist()},
        "context_length": cfg.max_position_embeddings,
        "config": {
            "model_type": cfg.model_type,
            "vocab_size": cfg.vocab_size,
            "num_hidden_layers": cfg.num_hidden_layers,
            "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.intermediate_size,
            "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_key_value_heads,
            "head_dim": getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads),
            "rms_norm_eps": cfg.rms_norm_eps,
            "rope_theta": cfg.rope_parameters["rope_theta"],
            "tie_word_embeddings": cfg.tie_word_embeddings,
            "max_position_embeddings": cfg.max_position_embeddings,
        },
        "weight_samples": samples,
    }
    dump(FIX / "smollm2" / "reference.json", out)
    print(f"[smollm2] {len(ids)} ids, LL={out['loglikelihood']:.4f} "
          f"({out['loglikelihood'] / len(ids):.3f}/token), ids2 {len(ids2)}, bos {tok.bos_token_id} "
          f"eos {tok.eos_token_id}, top5 {top.indices.tolist()}")


PARTS = {"lm": make_lm, "ttt": make_ttt, "tokenizer": make_tokenizer, "smollm2": make_smollm2}

if __name__ == "__main__":
    wanted = sys.argv[1:] or list(PARTS)
    for p in wanted:
        PARTS[p]()
