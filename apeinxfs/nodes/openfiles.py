"""The rendered texts that open show files read, and the bytes each uid's open descriptors hold (`[limits]`).

An open of a show file reads the file's text as it was at that open, until it closes. Snapshots of the same
text are one bytes object, whichever file and descriptor hold it: 300 opens of one 1 MiB prompt hold 1 MiB,
even with events between them. A uid's descriptors together may hold at most `open_bytes` bytes: its distinct
snapshots, and DESCRIPTOR_BYTES for each open file or directory whatever it reads (ENOMEM past it, as open(2)
of a pipe past the per-user pipe memory): root's and admins' too, each uid apart, as a cgroup's memory.max
binds whoever is in it (Linux exempts privileged users from the pipe bound; this one does not). Each inode keeps
the sizes of its open snapshots: getattr shows the largest. The last text rendered of each file is kept
(RenderCache) for the next open or getattr until the state changes, within a bound of its own. Not here:
rendering (Show.render, Tree.render), who may open what (fs.py, access.py).
"""
import attrs

from ..kernel.errors import NoMemory
from .base import Show

OPEN_BYTES = 64 << 20
RENDERED_MAX = 4096  # texts the render cache keeps at most ...
RENDERED_BYTES = 64 << 20  # ... and bytes
DESCRIPTOR_BYTES = 256  # one descriptor's own cost to the daemon, rounded up (a file's handle ~190 B, a directory's ~112 B)


@attrs.define(eq=False)
class OpenSnapshots:
    """The open snapshots: each distinct text once, each inode's open sizes, each uid's share."""

    open_bytes: int = OPEN_BYTES
    texts: dict[bytes, list] = attrs.Factory(dict)  # text -> [the one object of it, descriptors reading it]
    pinned: dict[int, tuple[Show, list[int]]] = attrs.Factory(dict)  # inode -> its node, its open sizes
    held: dict[int, dict[bytes, int]] = attrs.Factory(dict)  # uid -> text -> its descriptors reading it
    descriptors: dict[int, int] = attrs.Factory(dict)  # uid -> its open descriptors, files and directories
    charged: dict[int, int] = attrs.Factory(dict)  # uid -> bytes of its descriptors and the distinct texts in held

    def hold(self, uid: int, text: bytes = b"") -> None:
        """Charge `uid` for a new descriptor that reads `text` (b"": none, or one its descriptors hold already);
        NoMemory if that would take the uid past open_bytes."""
        total = self.charged.get(uid, 0) + DESCRIPTOR_BYTES + len(text)
        if total > self.open_bytes:
            raise NoMemory(f"uid {uid}'s open descriptors would hold {total} bytes, more than "
                           f"limits.open_bytes ({self.open_bytes}): close some")
        self.charged[uid] = total
        self.descriptors[uid] = self.descriptors.get(uid, 0) + 1

    def drop(self, uid: int, text: bytes = b"") -> None:
        """A descriptor of `uid` is closed, and `text` (what hold charged for it) no longer held."""
        self.charged[uid] -= DESCRIPTOR_BYTES + len(text)
        self.descriptors[uid] -= 1
        if not self.descriptors[uid]:
            del self.descriptors[uid], self.charged[uid]

    def open(self, node: Show, uid: int, text: bytes) -> bytes:
        """The snapshot a new descriptor of `uid` on `node` reads: `text`, or the equal one already held;
        NoMemory if that would take the uid past open_bytes."""
        shared = self.texts.get(text, (text,))[0]
        mine = self.held.get(uid, {})
        self.hold(uid, b"" if shared in mine else shared)
        self.texts.setdefault(shared, [shared, 0])[1] += 1
        self.pinned.setdefault(node.inode, (node, []))[1].append(len(shared))
        self.held.setdefault(uid, mine)[shared] = mine.get(shared, 0) + 1
        return shared

    def close(self, inode: int, uid: int, text: bytes) -> None:
        """A descriptor of `uid` on `inode` that read `text` (what open returned) is closed."""
        sizes = self.pinned[inode][1]
        sizes.remove(len(text))
        if not sizes:
            del self.pinned[inode]
        entry = self.texts[text]
        entry[1] -= 1
        if not entry[1]:
            del self.texts[text]
        mine = self.held[uid]
        mine[text] -= 1
        if not mine[text]:
            del mine[text]
        if not mine:
            del self.held[uid]
        self.drop(uid, b"" if text in mine else text)

    def check_invariants(self) -> None:
        """Each uid is charged its descriptors and its distinct texts once; each text counts every descriptor
        reading it."""
        for uid, count in self.descriptors.items():
            texts = sum(map(len, self.held.get(uid, {})))
            assert self.charged[uid] == count * DESCRIPTOR_BYTES + texts, (uid, self.charged[uid])
        assert set(self.charged) == set(self.descriptors) >= set(self.held)
        readers = sum(count for mine in self.held.values() for count in mine.values())
        assert readers == sum(entry[1] for entry in self.texts.values()) == sum(
            len(sizes) for _, sizes in self.pinned.values())

    def opened(self, inode: int) -> Show | None:
        pinned = self.pinned.get(inode)
        return pinned[0] if pinned else None

    def largest(self, inode: int) -> int | None:
        """The size of the largest snapshot open on `inode`; None if none is open."""
        pinned = self.pinned.get(inode)
        return max(pinned[1]) if pinned else None


@attrs.define(eq=False)
class RenderCache:
    """The last text rendered of each show file, with the state version it was rendered at: at most max_texts
    texts and max_bytes bytes in all, the oldest rendered forgotten first past either. A lookup's getattr fills
    it as an open does, so it is the daemon's own, charged to no uid."""

    max_texts: int = RENDERED_MAX
    max_bytes: int = RENDERED_BYTES
    texts: dict[int, tuple[int, bytes]] = attrs.Factory(dict)  # inode -> (version, text), oldest first
    size: int = 0  # bytes of the texts

    def get(self, inode: int, version: int) -> bytes | None:
        """`inode`'s text rendered at `version`, if kept."""
        cached = self.texts.get(inode)
        return cached[1] if cached is not None and cached[0] == version else None

    def put(self, inode: int, version: int, text: bytes) -> None:
        """Keep `text`, `inode`'s rendered at `version`, in place of its older one."""
        if (older := self.texts.pop(inode, None)) is not None:
            self.size -= len(older[1])
        self.texts[inode] = (version, text)
        self.size += len(text)
        while self.size > self.max_bytes or len(self.texts) > self.max_texts:
            self.size -= len(self.texts.pop(next(iter(self.texts)))[1])
