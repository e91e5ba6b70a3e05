"""A small random Qwen2 chat model in the on-disk format vLLM serves (config, safetensors
weights, a byte-level BPE tokenizer with a ChatML template), built in a test's temp dir for
``make test-vllm``.

Its output is steered so a test can read it: the final norm keeps one hidden dimension and the
head scores two tokens, ``x`` on its plus side and ``y`` on its minus side, so every answer is
a run of ``x`` and ``y`` (no newline, no end of turn) and ends only at ``max_tokens`` or when the
client closes the stream.
"""

from __future__ import annotations

from pathlib import Path

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def tiny_chat_model(folder: Path) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    text = (Path(__file__).read_text() * 4).splitlines()
    bpe.train_from_iterator(text, trainers.BpeTrainer(
        vocab_size=512, special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>", bos_token=None)
    tok.chat_template = CHATML
    tok.save_pretrained(folder)
    # Small in vocabulary, not in width: a decode step reads all 33M weights (about 130 MB),
    # so a 512-token answer streams for seconds on a CPU, and a test that cancels or kills on
    # the first preview always meets it mid-stream (a 0.1M model finished in milliseconds).
    config = Qwen2Config(vocab_size=len(tok), hidden_size=512, intermediate_size=2048,
                         num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=4,
                         head_dim=32, max_position_embeddings=4096,
                         tie_word_embeddings=False, eos_token_id=tok.eos_token_id,
                         bos_token_id=None, pad_token_id=tok.pad_token_id,
                         torch_dtype="float32")
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    x, y = tok.convert_tokens_to_ids(["x", "y"])
    with torch.no_grad():
        model.model.norm.weight.zero_()
        model.model.norm.weight[0] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[x, 0] = 100.0
        model.lm_head.weight[y, 0] = -100.0
    model.save_pretrained(folder, safe_serialization=True)
    return folder
