"""A tiny llama-architecture GGUF model for tests: seeded random weights, byte-level BPE.

`write(path, seed)` makes the same few hundred KB file for the same seed. llama.cpp loads
it in milliseconds and decodes thousands of tokens a second on a CPU; its text is
gibberish made of English-looking pieces. Every byte is a token, so any prompt tokenizes;
merges build a few hundred common words. The one special token (<|endoftext|>, BOS and
EOS) has a zero output row while the other logits spread wide, so samplers never pick it
and generation runs to max_tokens. Not a model of anything: it only exercises engines.

Run `python tests/tinymodel.py OUT.gguf` to write one by hand.
"""
import sys

import gguf
import numpy as np

SHAPE = {"embd": 64, "layers": 2, "heads": 4, "ff": 128, "context": 4096}
END = "<|endoftext|>"
WORDS = (
    "the of and to in is that it for on with as was by this be are at from or an model token memory "
    "page cache kernel task queue batch prompt context engine fair share weight budget trace stream "
    "wait schedule decode prefill attention layer head value key vector tensor compute system process "
    "file mount read write open close signal state runs serves holds keeps grows moves small large"
).split()


def byte_symbols() -> list[str]:
    """GPT-2's printable stand-in for each byte 0..255 (byte-level BPE's alphabet)."""
    direct = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = iter(range(256, 512))
    return [chr(b) if b in direct else chr(next(shifted)) for b in range(256)]


def vocabulary() -> tuple[list[str], list[str]]:
    """(tokens, merges): the 256 bytes, then each word grown left to right, with and without a space."""
    symbols = byte_symbols()
    tokens, merges = list(symbols), []
    for word in WORDS:
        for spelled in ([symbols[b] for b in word.encode()], [symbols[32], *word]):
            piece = spelled[0]
            for letter in spelled[1:]:
                if piece + letter not in tokens:
                    merges.append(f"{piece} {letter}")
                    tokens.append(piece + letter)
                piece += letter
    return tokens + [END], merges


def weights(rng, vocab: int) -> dict[str, np.ndarray]:
    """Random tensors by GGUF name (numpy shapes are ggml's reversed); special rows of output zeroed."""
    e, ff = SHAPE["embd"], SHAPE["ff"]
    normal = lambda *shape, scale: (rng.standard_normal(shape) * scale).astype(np.float16)  # noqa: E731
    tensors = {"token_embd.weight": normal(vocab, e, scale=1.0), "output_norm.weight": np.ones(e, np.float32),
               "output.weight": normal(vocab, e, scale=2.5)}
    tensors["output.weight"][vocab - 1] = 0
    for n in range(SHAPE["layers"]):
        for name, shape in {"attn_q": (e, e), "attn_k": (e, e), "attn_v": (e, e), "attn_output": (e, e),
                            "ffn_gate": (ff, e), "ffn_up": (ff, e), "ffn_down": (e, ff)}.items():
            tensors[f"blk.{n}.{name}.weight"] = normal(*shape, scale=shape[1] ** -0.5)
        tensors[f"blk.{n}.attn_norm.weight"] = np.ones(e, np.float32)
        tensors[f"blk.{n}.ffn_norm.weight"] = np.ones(e, np.float32)
    return tensors


def describe(writer: gguf.GGUFWriter, tokens: list[str], merges: list[str]) -> None:
    """The hyperparameters and tokenizer metadata llama.cpp reads for arch `llama`."""
    writer.add_name("apeinxfs tiny test model")
    writer.add_context_length(SHAPE["context"])
    writer.add_embedding_length(SHAPE["embd"])
    writer.add_block_count(SHAPE["layers"])
    writer.add_feed_forward_length(SHAPE["ff"])
    writer.add_head_count(SHAPE["heads"])
    writer.add_head_count_kv(SHAPE["heads"])
    writer.add_rope_dimension_count(SHAPE["embd"] // SHAPE["heads"])
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.NORMAL] * (len(tokens) - 1) + [gguf.TokenType.CONTROL])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(len(tokens) - 1)
    writer.add_eos_token_id(len(tokens) - 1)
    writer.add_add_bos_token(False)


def write(path, seed: int = 0):
    """Write the tiny model for `seed` to `path`; returns `path`."""
    tokens, merges = vocabulary()
    writer = gguf.GGUFWriter(str(path), "llama")
    describe(writer, tokens, merges)
    for name, tensor in weights(np.random.default_rng(seed), len(tokens)).items():
        writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


if __name__ == "__main__":
    print(write(sys.argv[1]))
