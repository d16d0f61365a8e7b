"""What a node tells the cluster of the prompt prefixes it holds cached, for placement's prefix affinity.

A node's KV manager keys each cached prompt block by a hash chain (kernel/memory.py
`prompt_chain`: block i's key hashes block i-1's key and its tokens, starting from the
model's name), so a key stands for the whole prefix up to its block, on any node with
the same model and page size. `summary_of(kv)` picks at most MOST_KEYS of a node's
cached keys, prefix heads first: the blocks its running tasks hold, breadth first along
their chains, then the idle cached blocks, most recently used first on each GPU (a
finished task's chain goes idle tail first, so its head is the most recent). It puts
them in a Bloom filter of BITS_PER_KEY bits a key (at most 512 bytes; base64 in the
record) and reports how many keys it holds. `cached_blocks(summary, chain)` is how many
of a chain's leading blocks a summary holds (a false positive, at most about one in 1,400 a key,
may add one); `line_chains(kernel, specs)` are the chains of a write's lines' prompts (of its
first WRITE_LINES lines), worked out on the node written to.
Not here: how placement weighs them (placement.py). Pure: no etcd, no I/O.
"""
import base64
import functools
import itertools
from collections.abc import Iterator, Sequence

from ..kernel.memory import Chain, KVManager, prompt_chain

MOST_KEYS = 256  # cached block keys a node's summary holds at most
BITS_PER_KEY = 16  # filter bits a key (a power of two): 7 hashes, at most about 0.07% false positives
HASHES = 7  # bit positions a key sets, 16-bit slices of its 128-bit key
WRITE_LINES = 16  # a write's lines whose prompts are looked up (a write of 20,000 lines hashes 16)


def summary_of(kv: KVManager, most: int = MOST_KEYS) -> tuple[str, int]:
    """(the Bloom filter of the node's first `most` cached keys, heads first, as base64; how many)."""
    keys: dict[bytes, None] = {}
    for key in _heads_first(kv):
        if len(keys) == most:
            break
        keys[key] = None
    return _filter(list(keys)), len(keys)


def _heads_first(kv: KVManager) -> Iterator[bytes]:
    """The keys of running tasks' chains breadth first, then idle keys round the GPUs, newest first."""
    chains = list(dict.fromkeys(task.kv_blocks for task in kv.holders.values() if task.kv_blocks))
    for depth in range(max(map(len, chains), default=0)):
        yield from (chain[depth] for chain in chains if depth < len(chain))
    rounds = itertools.zip_longest(*(reversed(cache.idle) for cache in kv.caches))
    yield from (key for keys in rounds for key in keys if key is not None)


@functools.lru_cache(maxsize=4096)
def _mask(key: bytes, bits: int) -> int:
    """The filter bits `key` sets in a filter of `bits` bits (a power of two), as an int."""
    number, mask = int.from_bytes(key[:2 * HASHES], "big"), 0
    for shift in range(0, 16 * HASHES, 16):
        mask |= 1 << (number >> shift) % bits
    return mask


def _filter(keys: Sequence[bytes]) -> str:
    """A Bloom filter of `keys`, at least 8 bytes, a power of two of them; "" for none."""
    if not keys:
        return ""
    size = 8
    while size * 8 < BITS_PER_KEY * len(keys):
        size *= 2
    bits = 0
    for key in keys:
        bits |= _mask(key, size * 8)
    return base64.b64encode(bits.to_bytes(size, "little")).decode()


def cached_blocks(summary: str, chain: Chain) -> int:
    """How many of the chain's leading blocks the summary holds (0 for an empty summary)."""
    if not summary or not chain:
        return 0
    bits, size, held = *_decoded(summary), 0
    for key in chain:
        mask = _mask(key, size)
        if bits & mask != mask:
            break
        held += 1
    return held


def readable(summary: str) -> bool:
    """Whether `summary` is a filter as `_filter` writes it: "" or base64 of 8 bytes or more, a power of two."""
    try:
        size = len(base64.b64decode(summary, validate=True))
    except ValueError:  # binascii.Error
        return False
    return size == 0 or size >= 8 and size & (size - 1) == 0


@functools.lru_cache(maxsize=1024)
def _decoded(summary: str) -> tuple[int, int]:
    """A summary's filter as an int, and its size in bits (each record's is read at every placement)."""
    raw = base64.b64decode(summary)
    return int.from_bytes(raw, "little"), len(raw) * 8


def line_chains(kernel, specs: Sequence) -> list[Chain]:
    """The block chain of each line's prompt, in line order, in this node's page size for its model: empty
    past the first WRITE_LINES lines, without a prompt, or for a model this node does not hold."""
    return [_chain(kernel, spec) if number < WRITE_LINES else () for number, spec in enumerate(specs)]


def _chain(kernel, spec) -> Chain:
    model = kernel.models.name_of(spec)
    per_page = kernel.kv.per_page.get(model)
    return prompt_chain(model, per_page, spec.prompt) if per_page and spec.prompt else ()
