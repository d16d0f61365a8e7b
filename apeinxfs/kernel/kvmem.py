"""KV-cache accounting in pages: bytes per token from a model's shape, one pool per GPU.

Pages are counted, not placed: the engine owns the real memory and this module keeps
the kernel's books so admission, placement and pressure can be decided. The prefix
cache and eviction build on these pools in memory.py.
"""
import functools
import re

import attrs

from .errors import Invalid

_TOKEN = re.compile(r"\w+|[^\w\s]")
BYTES_PER_TOKEN = 4  # the most UTF-8 bytes the estimate lets a token cover (see estimate_prompt_tokens)
# How a task's prompt tokens are counted, as its submit or adoption row says (events.Submit.counting):
COUNT_ENGINE = 2  # estimate_prompt_tokens until the engine first reports its count, then that count
COUNT_WORDS = 1  # a row journaled before the daemon billed the engine's count: words and marks, throughout


def bytes_per_token(layers: int, kv_heads: int, head_dim: int, dtype_bytes: int) -> int:
    """K and V for every layer: 2 x layers x kv_heads x head_dim x dtype bytes."""
    return 2 * layers * kv_heads * head_dim * dtype_bytes


def pages_for(tokens: int, token_bytes: int, page_bytes: int) -> int:
    """Pages needed to hold the KV of `tokens` tokens (exact integer ceiling division)."""
    return -(-tokens * token_bytes // page_bytes)


def prompt_pieces(prompt: str) -> list[str]:
    """The prompt cut the way the estimate counts it: words and punctuation marks."""
    return _TOKEN.findall(prompt)


@functools.lru_cache(maxsize=1024)
def estimate_prompt_tokens(prompt: str, counting: int = COUNT_ENGINE) -> int:
    """Tokens a prompt will take before the engine says: its words and marks or a token per BYTES_PER_TOKEN of
    its UTF-8 bytes, whichever is more, plus BOS (COUNT_WORDS: words and marks plus BOS, as older code counted).

    The byte bound is there because words are the submitter's to shape: 40 KB without a space is one word, and
    thousands of tokens to a tokenizer. A byte-level BPE or byte-fallback tokenizer makes at most one token of a
    byte, so no prompt takes more than BYTES_PER_TOKEN times the estimate; English text averages about 4 bytes a
    token, so the bound seldom raises the estimate of ordinary prose above what the engine counts.
    Remembered for recent prompts: a submit asks at its check, its admission and its apply."""
    if counting == COUNT_WORDS:
        return least_prompt_tokens(prompt)
    return max(least_prompt_tokens(prompt), 1 + -(-len(prompt.encode()) // BYTES_PER_TOKEN))


@functools.lru_cache(maxsize=1024)
def least_prompt_tokens(prompt: str) -> int:
    """The prompt's tokens as a refusal that never lifts (context, KV pool) counts them: words and marks plus BOS.

    Not the estimate, which may be 4 times the engine's count (a token of 8 bytes or more: long English words),
    and would refuse prompts that fit. This is what apeinxfs counted before it had the byte bound, so it refuses
    no prompt that count admitted; a prompt it lets by that the engine counts beyond the pool ends when the count
    comes (reclaim.py), and the engine enforces its own context. Remembered for recent prompts, as the estimate:
    a submit's check, its admission and each dispatch of a tenant with a kv_pages quota ask."""
    return 1 + len(prompt_pieces(prompt))


@attrs.define
class KVPool:
    """One GPU's KV pages: how many exist and how many are handed out."""

    page_bytes: int
    pages_total: int
    pages_used: int = 0

    @property
    def pages_free(self) -> int:
        return self.pages_total - self.pages_used

    def alloc(self, pages: int) -> bool:
        """Take `pages` if they are free; say whether it worked."""
        if pages > self.pages_free:
            return False
        self.pages_used += pages
        return True

    def free(self, pages: int) -> None:
        if pages > self.pages_used:
            raise Invalid(f"freeing {pages} pages but only {self.pages_used} are used")
        self.pages_used -= pages
