#!/usr/bin/env python3
"""PyTorch side of `tttnn bench lm`.

  bench_lm.py init --arch gpt2|smollm2 --out DIR   random-initialised, seeded model saved as a
                                                   Hugging Face folder (both sides load it)
  bench_lm.py run --model DIR --seq N [...]        times one scoring pass, one training step
                                                   (forward + backward + AdamW + clip) and one
                                                   TTT-NN document; prints one JSON line

Token ids come from the same SplitMix64 stream as the Rust side (`bench_lm.rs`), so the
losses of the two sides must agree.
"""
import argparse, json, resource, statistics, sys, time


def splitmix_ids(n, vocab, seed):
    s, out, m = seed, [], (1 << 64) - 1
    for _ in range(n):
        s = (s + 0x9E3779B97F4A7C15) & m
        z = s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
        z ^= z >> 31
        out.append(z % vocab)
    return out


def config(arch):
    if arch == "gpt2":
        from transformers import GPT2Config
        return GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024,
                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    if arch == "smollm2":
        from transformers import LlamaConfig
        return LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                           num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                           tie_word_embeddings=True, max_position_embeddings=2048,
                           rope_theta=100000.0, rms_norm_eps=1e-5, attention_dropout=0.0)
    sys.exit(f"unknown arch {arch}")


def init(a):
    import torch
    from transformers import AutoModelForCausalLM
    torch.manual_seed(a.seed)
    model = AutoModelForCausalLM.from_config(config(a.arch))
    model.save_pretrained(a.out)


def run(a):
    import torch
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(a.threads)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    model.train()  # every dropout is 0 in the saved config
    vocab = model.config.vocab_size
    doc = torch.tensor([splitmix_ids(a.seq, vocab, 1)])
    neighbors = [torch.tensor([splitmix_ids(a.seq, vocab, 100 + i)]) for i in range(a.k)]

    def score(ids):
        with torch.no_grad():
            logits = model(ids[:, :-1]).logits[0]
            lp = torch.log_softmax(logits.float(), -1).gather(1, ids[0, 1:, None])
        return lp.sum().item()

    def new_opt():
        return torch.optim.AdamW(model.parameters(), lr=2e-5, eps=1e-8, weight_decay=0.01)

    def step(ids, opt):
        loss = model(ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def restore():
        with torch.no_grad():
            for k, v in model.state_dict().items():
                v.copy_(saved[k])

    def ttt_doc():
        opt = new_opt()
        scores = [score(doc)]
        for n in neighbors:
            step(n, opt)
            scores.append(score(doc))
        restore()
        return scores

    def timed(f, reps):
        times, out = [], None
        for _ in range(reps):
            t = time.perf_counter()
            out = f()
            times.append(time.perf_counter() - t)
        return statistics.median(times), out

    first_score = score(doc)  # warm-up, and the value to compare
    opt = new_opt()
    first_loss = step(neighbors[0], opt)  # warm-up; loss on the initial weights
    restore()
    score_s, _ = timed(lambda: score(doc), a.reps)
    opt = new_opt()
    step_s, _ = timed(lambda: step(neighbors[0], opt), a.reps)
    restore()
    ttt_s, ttt_scores = timed(ttt_doc, a.ttt_reps)
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({
        "side": "pytorch", "seq": a.seq, "threads": a.threads, "torch": torch.__version__,
        "score_s": score_s, "step_s": step_s, "ttt_doc_s": ttt_s, "peak_rss_mib": rss_kib / 1024,
        "score_logprob_sum": first_score, "first_loss": first_loss, "ttt_scores": ttt_scores,
    }))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("init")
    i.add_argument("--arch", required=True)
    i.add_argument("--out", required=True)
    i.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("run")
    r.add_argument("--model", required=True)
    r.add_argument("--seq", type=int, required=True)
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--reps", type=int, default=3)
    r.add_argument("--ttt-reps", type=int, default=1)
    r.add_argument("-k", type=int, default=3)
    a = p.parse_args()
    init(a) if a.cmd == "init" else run(a)


if __name__ == "__main__":
    main()
