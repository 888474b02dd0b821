#!/usr/bin/env python3
"""Writes fixtures/embed/: reference embeddings from Hugging Face transformers for the
`embed` crate's parity tests. Run by developers (not CI), in the venv of
scripts/requirements-fixtures.txt:

    ~/.cache/tttnn/refenv/bin/python scripts/make_embed_fixtures.py

1. minilm_expected.json: the real all-MiniLM-L6-v2 (from ${TTTNN_CACHE:-~/.cache/tttnn}),
   mean-pooled over the attention mask and L2-normalised, for a few texts (one longer than
   512 tokens, one with non-ASCII text), computed as one padded batch.
2. tiny-roberta/: a randomly initialised 2-layer RoBERTa (hidden 32, a 400-token byte-level
   BPE tokenizer trained here, max_position_embeddings 66 -> 64 tokens), and
   tiny_roberta_expected.json with its mean-pooled (not normalised) embeddings, so RoBERTa's
   position ids (padding_idx + 1 onwards) and truncation are tested.
"""
import json
import os
import pathlib

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers, processors
from transformers import AutoModel, RobertaConfig, RobertaModel

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "embed"
CACHE = pathlib.Path(os.environ.get("TTTNN_CACHE", pathlib.Path.home() / ".cache" / "tttnn"))

LONG = " ".join(
    f"Sentence {i}: the retrieval index stores one vector per training document, and the "
    f"test document's neighbors are read back by byte offset." for i in range(40)
)
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Zürich's café serves crème brûlée — 東京, Москва and naïve emoji 🎉 too.",
    "fn main() {\n    println!(\"hello, world\");\n}\n",
    LONG,
]


def mean_pool(model, ids_list, pad_id, normalize):
    t = max(len(x) for x in ids_list)
    ids = torch.full((len(ids_list), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids_list), t), dtype=torch.long)
    for i, x in enumerate(ids_list):
        ids[i, : len(x)] = torch.tensor(x)
        mask[i, : len(x)] = 1
    with torch.no_grad():
        h = model(input_ids=ids, attention_mask=mask).last_hidden_state
    m = mask.unsqueeze(-1).float()
    pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
    if normalize:
        pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
    return pooled


def minilm():
    src = CACHE / "all-minilm-l6-v2"
    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(512)
    ids = [tok.encode(t).ids for t in TEXTS]
    assert len(ids[3]) == 512, "the long text must be truncated"
    model = AutoModel.from_pretrained(str(src), attn_implementation="eager").eval()
    emb = mean_pool(model, ids, 0, normalize=True)
    return {"model": "all-minilm-l6-v2", "max_tokens": 512, "normalize": True, "texts": TEXTS,
            "token_ids": ids, "embeddings": emb.tolist()}


def tiny_roberta():
    d = OUT / "tiny-roberta"
    d.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXTS * 5, trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tok.save(str(d / "tokenizer.json"))
    torch.manual_seed(1216)
    cfg = RobertaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=66,
                        type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                        hidden_act="gelu", layer_norm_eps=1e-5)
    model = RobertaModel(cfg, add_pooling_layer=False).eval()
    # Random init leaves LayerNorms at identity and biases at zero; perturb them so the test
    # sees every parameter.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(str(d), safe_serialization=True)
    tok.no_padding()
    tok.enable_truncation(64)
    ids = [tok.encode(t).ids for t in TEXTS]
    assert len(ids[3]) == 64
    emb = mean_pool(model, ids, 1, normalize=False)
    return {"model": "tiny-roberta", "max_tokens": 64, "normalize": False, "texts": TEXTS,
            "token_ids": ids, "embeddings": emb.tolist()}


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for name, fn in [("tiny_roberta_expected.json", tiny_roberta), ("minilm_expected.json", minilm)]:
        data = fn()
        (OUT / name).write_text(json.dumps(data, ensure_ascii=False) + "\n")
        print("wrote", OUT / name, [len(x) for x in data["token_ids"]])


if __name__ == "__main__":
    main()
