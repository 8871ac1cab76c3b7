"""The Hugging Face transformers side of genrec's checkpoint compatibility test.

Run by tests/hf_compat.rs (with the Python named by GENREC_PYTHON); needs
torch and transformers. Two commands, both reading and writing JSON:

  logprobs MODEL_DIR TOKENS_JSON OUT_JSON
      Loads MODEL_DIR with AutoModelForCausalLM.from_pretrained (float32) and
      writes the next-token log-probabilities at every position of every token
      sequence in TOKENS_JSON ({"sequences": [[int, ...], ...]}) as
      {"logprobs": [[[float] * vocab] * len] * sequences}.

  write ARCH VOCAB OUT_DIR SEED [MAX_SHARD_SIZE]
      Builds a small randomly initialised LlamaForCausalLM or Qwen3ForCausalLM
      (ARCH: llama | qwen3) with VOCAB tokens and writes it with
      save_pretrained (safetensors), as a PyTorch user would; with
      MAX_SHARD_SIZE (e.g. 100KB) split into shards and an index, as
      transformers writes every model above its default shard size.
"""

import json
import sys

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config


def logprobs(model_dir, tokens_json, out_json):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    with open(tokens_json) as f:
        seqs = json.load(f)["sequences"]
    out = []
    with torch.no_grad():
        for s in seqs:
            ids = torch.tensor([s], dtype=torch.long)
            logits = model(input_ids=ids).logits[0]
            out.append(torch.log_softmax(logits.float(), dim=-1).tolist())
    with open(out_json, "w") as f:
        json.dump({"logprobs": out}, f)


def write(arch, vocab, out_dir, seed, max_shard_size=None):
    torch.manual_seed(seed)
    common = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rope_theta=5000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        # larger than the default 0.02 so that the log-probabilities are far
        # from uniform and a wrong weight or layout shows
        initializer_range=0.2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    if arch == "llama":
        cfg = LlamaConfig(**common)
    elif arch == "qwen3":
        cfg = Qwen3Config(head_dim=32, **common)
    else:
        raise SystemExit(f"unknown arch {arch!r}: llama or qwen3")
    model = AutoModelForCausalLM.from_config(cfg)
    # norms start at 1: perturb them so that a misplaced norm weight shows too
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    if max_shard_size:
        model.save_pretrained(out_dir, safe_serialization=True, max_shard_size=max_shard_size)
    else:
        model.save_pretrained(out_dir, safe_serialization=True)


def main():
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "logprobs" and len(sys.argv) == 5:
        logprobs(*sys.argv[2:5])
    elif cmd == "write" and len(sys.argv) in (6, 7):
        write(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), *sys.argv[6:])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
