"""The transformers side of the LLM-layout parity test (tests/llm_layout.rs).

Run with the Python named by GENREC_PYTHON (torch, transformers, tokenizers).

  write ARCH OUT_DIR SEED
      Writes what an LLM-based recommender's trainer leaves behind, as it
      writes it: a small random-weight LlamaForCausalLM / Qwen2ForCausalLM /
      Qwen3ForCausalLM (ARCH: llama | qwen2 | qwen3) saved with
      save_pretrained, its tokenizer (a byte-level BPE with the semantic-ID
      tokens added) saved with save_pretrained, and an item map:
        llama: LC-Rec style, `index.json`, tokens <a_N><b_N><c_N> added in
               sorted (string) order, a tokenizer that adds <s>;
        qwen2: LC-Rec style, tokens added level-interleaved (<a_0>, <b_0>,
               <c_0>, <a_1>, ...), tied embeddings;
        qwen3: OpenOneRec style, `sid2pid.json` with encoded keys, tokens
               <s_a_N>/<s_b_N>/<s_c_N> and <|sid_begin|>, <|sid_end|>, and
               a Qwen-style chat template in tokenizer_config.json.

  generate MODEL_DIR SPEC_JSON OUT_JSON
      SPEC_JSON: {"template": str, "separator": str, "item_map": file,
      "format": "index"|"sid2pid", "levels": [pattern, ...] or [],
      "chat": bool, "answer_prefix": str,
      "beams": int, "requests": [{"history": [item id], "profile": str|null,
      "query": str|null}]}. Renders each prompt (its own reading of the
      template: slots and [[ ]] sections; with "chat", the user message of
      apply_chat_template(add_generation_prompt=True), then the answer
      prefix), tokenizes it with AutoTokenizer and
      runs generate(num_beams, prefix_allowed_tokens_fn=<trie of the item
      map>, length_penalty=0) for one level per semantic-ID token. Writes
      {"results": [{"items": [id, ...], "scores": [float, ...],
      "prompt_ids": [int, ...]}]}.
"""

import json
import random
import re
import sys

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedTokenizerFast,
                          Qwen2Config, Qwen3Config)

SIZES = [12, 11, 10]
ITEMS = 90
CORPUS = [
    "The user has interacted with these items, oldest first.",
    "Predict the next item the user will interact with.",
    "The user's profile: age, gender, occupation, interests.",
    "The user is looking for red shoes, a lipstick, a tent or a novel.",
] * 20


# Qwen's shape of chat template: a default system turn, python string
# methods, the generation prompt
QWEN_CHAT = (
    "{%- if messages[0]['role'] != 'system' %}<|im_start|>system\nYou recommend items.<|im_end|>\n{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\n' + message['content'].strip() + '<|im_end|>' + '\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)


def onerec_key(codes):
    return str(codes[0] * 8192 * 8192 + codes[1] * 8192 + codes[2])


def write(arch, out_dir, seed):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    sids = set()
    while len(sids) < ITEMS:
        sids.add(tuple(rng.randrange(s) for s in SIZES))
    sids = sorted(sids, key=lambda _: rng.random())
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    if arch == "qwen3":
        names = ["s_a", "s_b", "s_c"]
    else:
        names = ["a", "b", "c"]
    level_tokens = [[f"<{n}_{c}>" for c in range(s)] for n, s in zip(names, SIZES)]
    if arch == "llama":
        added = sorted(t for level in level_tokens for t in level)
    elif arch == "qwen2":
        added = [level[c] for c in range(max(SIZES)) for level in level_tokens if c < len(level)]
    else:
        added = [t for level in level_tokens for t in level] + ["<|sid_begin|>", "<|sid_end|>"]
    tok.add_tokens([AddedToken(t, normalized=False) for t in added])
    if arch == "llama":
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    if arch == "qwen3":
        fast.chat_template = QWEN_CHAT
    fast.save_pretrained(out_dir)
    vocab = len(fast) + 5  # trainers round the vocabulary up; unused rows at the end
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  rms_norm_eps=1e-5, initializer_range=0.2, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if arch == "llama":
        cfg = LlamaConfig(tie_word_embeddings=False, **common)
    elif arch == "qwen2":
        cfg = Qwen2Config(tie_word_embeddings=True, **common)
    else:
        cfg = Qwen3Config(head_dim=32, tie_word_embeddings=False, **common)
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.add_(0.3 * torch.randn_like(p))
    model.save_pretrained(out_dir, safe_serialization=True)
    if arch == "qwen3":
        # one semantic ID carries two products (the second is an alias)
        m = {onerec_key(s): [{"pid": 1000 + i, "count": 5}] for i, s in enumerate(sids)}
        m[onerec_key(sids[0])].append({"pid": 9999, "count": 1})
        with open(f"{out_dir}/sid2pid.json", "w") as f:
            json.dump(m, f)
    else:
        m = {str(i): [level_tokens[l][c] for l, c in enumerate(s)] for i, s in enumerate(sids)}
        with open(f"{out_dir}/index.json", "w") as f:
            json.dump(m, f)


SLOT = re.compile(r"\{(history|profile|query)\}")


def render(template, fill):
    def section(m):
        inner = m.group(1)
        return inner if all(fill.get(s) for s in SLOT.findall(inner)) else ""
    text = re.sub(r"\[\[(.*?)\]\]", section, template, flags=re.S)
    return SLOT.sub(lambda m: fill.get(m.group(1)) or "", text)


def item_tokens(spec, model_dir):
    """Each item id and its token strings."""
    with open(f"{model_dir}/{spec['item_map']}") as f:
        m = json.load(f)
    if spec["format"] == "index":
        return {k: v for k, v in m.items()}
    out = {}
    for key, products in m.items():
        v = int(key)
        codes = [v // (8192 * 8192), v // 8192 % 8192, v % 8192]
        out[str(products[0]["pid"])] = [p.replace("{}", str(c)) for p, c in zip(spec["levels"], codes)]
    return out


def generate(model_dir, spec_json, out_json):
    with open(spec_json) as f:
        spec = json.load(f)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    items = item_tokens(spec, model_dir)
    children, leaf = {}, {}
    for item, toks in items.items():
        ids = tok.convert_tokens_to_ids(toks)
        for d in range(len(ids)):
            children.setdefault(tuple(ids[:d]), set()).add(ids[d])
        leaf[tuple(ids)] = item
    children = {k: sorted(v) for k, v in children.items()}
    levels = len(next(iter(items.values())))
    results = []
    for req in spec["requests"]:
        history = spec["separator"].join("".join(items[i]) for i in req["history"])
        prompt = render(spec["template"], {"history": history, "profile": req.get("profile"),
                                           "query": req.get("query")})
        if spec.get("chat"):
            text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                           tokenize=False) + spec.get("answer_prefix", "")
            ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
        else:
            ids = tok(prompt + spec.get("answer_prefix", ""), return_tensors="pt").input_ids
        width = ids.shape[1]

        def allowed(_batch_id, input_ids):
            return children.get(tuple(input_ids[width:].tolist()), [])

        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), num_beams=spec["beams"],
                                 num_return_sequences=spec["beams"], max_new_tokens=levels,
                                 min_new_tokens=levels, prefix_allowed_tokens_fn=allowed, do_sample=False,
                                 early_stopping=True, length_penalty=0.0, pad_token_id=0, eos_token_id=None,
                                 output_scores=True, return_dict_in_generate=True)
        gen = out.sequences[:, width:].tolist()
        results.append({"items": [leaf[tuple(t)] for t in gen], "scores": out.sequences_scores.tolist(),
                        "prompt_ids": ids[0].tolist()})
    with open(out_json, "w") as f:
        json.dump({"results": results}, f)


def main():
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "write" and len(sys.argv) == 5:
        write(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif cmd == "generate" and len(sys.argv) == 5:
        generate(*sys.argv[2:5])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
