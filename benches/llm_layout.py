"""The transformers side of benches/llm_layout.sh: an LLM-layout checkpoint of
a real small LLM's shape, and transformers' constrained generate timed on the
prompts genrec serves.

  write OUT_DIR [ITEMS] [USERS]
      A random-weight LlamaForCausalLM in SmolLM2-135M's shape (hidden 576,
      30 layers, 9 heads / 3 kv heads, 49,152 text tokens, tied
      embeddings) with 3 x 256 semantic-ID tokens <a_N>, <b_N>, <c_N> added
      to a byte-level BPE tokenizer, an LC-Rec index.json of ITEMS items
      (default 20,000), genrec.json and prompt.txt (an instruction preamble,
      then the history), and bench.inter.json: USERS users (default 64) of
      21 items each in the shared/data format (genrec bench's test split
      sends their first 20).

  generate OUT_DIR BEAMS [THREADS]
      For each user: the prompt of its first 20 items, tokenized by
      AutoTokenizer, then generate(num_beams=BEAMS, num_return_sequences=
      BEAMS, prefix_allowed_tokens_fn=<trie>), one request at a time.
      Prints JSON: requests, answers/s, p50/p99 ms, mean prompt tokens.
"""

import json
import random
import statistics
import sys
import time

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedTokenizerFast

CODES = 256
PREAMBLE = ("You are a recommender for an online store. Below is the list of products a customer "
            "bought, oldest first, each written as its semantic identifier. Read the list, think "
            "about what the customer is likely to need next, and answer with the semantic identifier "
            "of the single product they will buy next.")
TEMPLATE = PREAMBLE + " Purchases: {history}. Next product: "


def write(out, items=20000, users=64):
    rng = random.Random(7)
    torch.manual_seed(7)
    sids = set()
    while len(sids) < items:
        sids.add((rng.randrange(CODES), rng.randrange(CODES), rng.randrange(CODES)))
    sids = sorted(sids)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([PREAMBLE] * 50, trainer)
    tok.add_tokens([AddedToken(f"<{n}_{c}>", normalized=False) for n in "abc" for c in range(CODES)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.save_pretrained(out)
    cfg = LlamaConfig(vocab_size=49152 + 3 * CODES, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                      rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True, initializer_range=0.04,
                      bos_token_id=0, eos_token_id=0, pad_token_id=0)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(out, safe_serialization=True)
    with open(f"{out}/index.json", "w") as f:
        json.dump({str(i): [f"<a_{s[0]}>", f"<b_{s[1]}>", f"<c_{s[2]}>"] for i, s in enumerate(sids)}, f)
    with open(f"{out}/prompt.txt", "w") as f:
        f.write(TEMPLATE + "\n")
    with open(f"{out}/genrec.json", "w") as f:
        json.dump({"format": "genrec-sidecar/1", "name": "llm-bench-135m", "max_history_items": 20,
                   "llm": {"item_map": "index.json", "levels": ["<a_{}>", "<b_{}>", "<c_{}>"],
                           "prompt": "prompt.txt"}}, f, indent=2)
    inter = {str(u): [rng.randrange(items) for _ in range(21)] for u in range(users)}
    with open(f"{out}/bench.inter.json", "w") as f:
        json.dump(inter, f)


def generate(out, beams, threads=2):
    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    model.eval()
    with open(f"{out}/index.json") as f:
        items = json.load(f)
    with open(f"{out}/bench.inter.json") as f:
        inter = json.load(f)
    children = {}
    for toks in items.values():
        ids = tok.convert_tokens_to_ids(toks)
        for d in range(len(ids)):
            children.setdefault(tuple(ids[:d]), set()).add(ids[d])
    children = {k: sorted(v) for k, v in children.items()}
    times, lengths = [], []
    for seq in inter.values():
        history = ", ".join("".join(items[str(i)]) for i in seq[:-1][-20:])
        prompt = TEMPLATE.replace("{history}", history)
        ids = tok(prompt, return_tensors="pt").input_ids
        width = ids.shape[1]
        lengths.append(width)

        def allowed(_b, input_ids):
            return children.get(tuple(input_ids[width:].tolist()), [])

        t0 = time.perf_counter()
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), num_beams=beams,
                           num_return_sequences=beams, max_new_tokens=3, min_new_tokens=3,
                           prefix_allowed_tokens_fn=allowed, do_sample=False, early_stopping=True,
                           length_penalty=0.0, pad_token_id=0, eos_token_id=None)
        times.append(time.perf_counter() - t0)
    times.sort()
    print(json.dumps({"requests": len(times), "beams": beams, "threads": threads,
                      "answers_per_s": len(times) / sum(times),
                      "p50_ms": 1e3 * statistics.median(times), "p99_ms": 1e3 * times[int(0.99 * (len(times) - 1))],
                      "mean_prompt_tokens": sum(lengths) / len(lengths)}))


def main():
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "write" and len(sys.argv) in (3, 4, 5):
        write(sys.argv[2], *map(int, sys.argv[3:]))
    elif cmd == "generate" and len(sys.argv) in (4, 5):
        generate(sys.argv[2], int(sys.argv[3]), *map(int, sys.argv[4:]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
