"""Tiny random models built with transformers, saved as folders SGLang can serve."""

from __future__ import annotations

from pathlib import Path

# The tags NPR and Multiverse add to their tokenizers as additional special tokens
# (DESIGN.md section 2), in the order their code adds them.
NPR_TAGS = ("<guideline>", "</guideline>", "<plan>", "</plan>", "<step>", "</step>", "<takeaway>", "</takeaway>")
MULTIVERSE_TAGS = ("<Think>", "</Think>", "<Parallel>", "</Parallel>", "<Goal>", "</Goal>", "<Outline>",
                   "</Outline>", "<Path>", "</Path>", "<Conclusion>", "</Conclusion>")


def tiny_qwen3(out: Path, tokenizer_dir: Path, seed: int = 0, special_tags: bool = False) -> Path:
    """A 2-layer random Qwen3 sharing the default model's tokenizer (float32).

    `special_tags`: the tokenizer also carries NPR's and Multiverse's tags as
    additional special tokens, the way those models' tokenizers do.
    """
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if special_tags:
        tokenizer.add_special_tokens({"additional_special_tokens": [*NPR_TAGS, *MULTIVERSE_TAGS]},
                                     replace_extra_special_tokens=False)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config).to(torch.float32)
    # Larger-than-default init so greedy outputs depend visibly on the context.
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
