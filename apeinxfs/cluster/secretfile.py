"""Reading a secret from a file of its own: a private key, a password, the peers' shared token.

`read_private(path, named, grants)` reads the file at `path`, its mode taken from the file it
read (not a stat before the open), and refuses one every user may read: Invalid naming the
file as `named` says (with its `[cluster]` key, say) and what its reader could do (`grants`). What a secret must
look like inside is its caller's (etcd_auth.read_password, peer_wire.read_tokens).
"""
import os
import stat

from ..kernel.errors import Invalid


def read_private(path: str, named: str, grants: str) -> bytes:
    """The bytes of the secret file at `path`; Invalid naming it `named` if it cannot be read, or if every
    user may read it (which lets its reader `grants`)."""
    try:
        with open(path, "rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            secret = file.read()
    except OSError as exc:
        raise Invalid(f"{named}: {exc.strerror}") from None
    if mode & stat.S_IROTH:
        raise Invalid(f"{named} is readable by every user (mode {stat.S_IMODE(mode):04o}): "
                      f"chmod o-r it, as it lets its reader {grants}")
    return secret
