"""The `[cluster]` section of the config: which etcd, how TLS and etcd's authentication reach it,
the membership lease, this node's address.

A frozen record whose validators raise Invalid naming the key. Without `etcd` there is no
cluster: config.py then builds no `ClusterSettings` and the daemon runs as a single node.
Nothing here talks to etcd; docs/cluster.md says what each key does.
"""
import re
import urllib.parse

import attrs

from ..kernel.errors import Invalid
from .etcd_auth import Credentials, password_file
from .etcd_renew import TlsFiles
from .peer_wire import TokenFile, parse_address, token_file

KEYS = {"etcd", "lease_s", "advertise", "token_file", "peer_stall_s", "pid_block", "prefix", "replicate_s",
        "etcd_ca", "etcd_cert", "etcd_key", "etcd_user", "etcd_password_file"}
NODE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,62}")
MIN_LEASE_S = 2  # etcd refuses shorter TTLs (its minimum is 1.5 election timeouts)


def _endpoints(value) -> tuple[str, ...]:
    """A non-empty list of http(s)://HOST:PORT URLs, one per etcd member, all http:// or all https://."""
    if not isinstance(value, (list, tuple)) or not value:
        raise Invalid(f"config: cluster.etcd must be a list of etcd client URLs, not {value!r}")
    for url in value:
        parsed = urllib.parse.urlsplit(url) if isinstance(url, str) else None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.port is None:
            raise Invalid(f"config: cluster.etcd: {url!r} is not an http://HOST:PORT or https://HOST:PORT URL")
    if len({urllib.parse.urlsplit(url).scheme for url in value}) > 1:
        raise Invalid(f"config: cluster.etcd mixes http:// and https:// URLs ({', '.join(value)}): the members of "
                      f"one cluster all serve clients over TLS or none does")
    return tuple(url.rstrip("/") for url in value)


def _advertise(value) -> str | None:
    """HOST:PORT (peer_wire.parse_address), where peers reach this node's peer server."""
    if value is None:
        return None
    try:
        parse_address(value if isinstance(value, str) and "/" not in value else "")  # no URL: HOST:PORT
    except Invalid:
        raise Invalid(f"config: cluster.advertise must be HOST:PORT, not {value!r}") from None
    return value


def _integer_at_least(least: int):
    def check(_settings, attribute, value) -> None:
        if type(value) is not int or value < least:
            raise Invalid(f"config: cluster.{attribute.name} must be an integer >= {least}, not {value!r}")
    return check


def _path(_settings, attribute, value) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise Invalid(f"config: cluster.{attribute.name} must be a file's path, not {value!r}")


def _user(_settings, _attribute, value) -> None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise Invalid(f"config: cluster.etcd_user must be the name of a user of etcd, not {value!r}")


def _prefix(value) -> str:
    if not isinstance(value, str) or not value.strip("/") or not value.endswith("/"):
        raise Invalid(f"config: cluster.prefix must be a key prefix ending in '/', not {value!r}")
    return value


@attrs.frozen
class ClusterSettings:
    """What `[cluster]` says: etcd's members, the lease, this node's address and token file."""

    etcd: tuple[str, ...] = attrs.field(converter=_endpoints)
    lease_s: int = attrs.field(default=15, validator=_integer_at_least(MIN_LEASE_S))
    advertise: str | None = attrs.field(default=None, converter=_advertise)  # HOST:PORT
    token_file: str | None = attrs.field(default=None, validator=_path)
    peer_stall_s: int = attrs.field(default=10, validator=_integer_at_least(1))  # a peer taking no bytes so long: dropped
    pid_block: int = attrs.field(default=100_000, validator=_integer_at_least(1))
    prefix: str = attrs.field(default="apeinxfs/", converter=_prefix)
    replicate_s: int = attrs.field(default=2, validator=_integer_at_least(0))  # s between output puts; 0: none
    etcd_ca: str | None = attrs.field(default=None, validator=_path)  # CA bundle the members' certificates verify by
    etcd_cert: str | None = attrs.field(default=None, validator=_path)  # this node's client certificate ...
    etcd_key: str | None = attrs.field(default=None, validator=_path)  # ... and its private key
    etcd_user: str | None = attrs.field(default=None, validator=_user)  # etcd's authentication: the user ...
    etcd_password_file: str | None = attrs.field(default=None, validator=_path)  # ... and its password's file
    # Built from the keys above at start: the etcd client's TLS files (loaded again once renewed: etcd_renew.py),
    # etcd's credentials (or None; the password file looked at again once etcd refuses it: etcd_auth.py) and the
    # peers' tokens (or None; read again once the file is edited: peer_wire.token_file), one for the peer
    # server and the peers' clients.
    tls: TlsFiles = attrs.field(init=False, eq=False, repr=False)
    credentials: Credentials | None = attrs.field(init=False, eq=False, repr=False)
    tokens: TokenFile | None = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if (self.advertise is None) != (self.token_file is None):
            raise Invalid("config: cluster.advertise and cluster.token_file go together (the peer server needs both)")
        if (self.etcd_cert is None) != (self.etcd_key is None):
            raise Invalid("config: cluster.etcd_cert and cluster.etcd_key go together (a client certificate "
                          "and its key)")
        self._check_tls()
        self._check_auth()
        object.__setattr__(self, "tokens", self._tokens())  # a frozen record's own field, set once

    def _check_tls(self) -> None:
        """TLS keys only with https:// members; their files readable and well-formed now, at start."""
        given = [name for name in ("etcd_ca", "etcd_cert", "etcd_key") if getattr(self, name) is not None]
        plain = [url for url in self.etcd if url.startswith("http://")]
        if given and plain:
            raise Invalid(f"config: cluster.{given[0]} is set but cluster.etcd has plain http:// URLs ({plain[0]}): "
                          f"TLS needs https:// URLs")
        object.__setattr__(self, "tls", self._context())  # a frozen record's own field, set once

    def _check_auth(self) -> None:
        """etcd's user and password file together, only with https:// members; the password read now, at start."""
        if (self.etcd_user is None) != (self.etcd_password_file is None):
            raise Invalid("config: cluster.etcd_user and cluster.etcd_password_file go together (a user of etcd "
                          "and its password)")
        if self.etcd_user is not None and self.etcd[0].startswith("http://"):
            raise Invalid(f"config: cluster.etcd_user is set but cluster.etcd has plain http:// URLs ({self.etcd[0]}): "
                          f"the password and its token would cross the network in clear; etcd's authentication "
                          f"needs https:// URLs")
        object.__setattr__(self, "credentials", self._credentials())  # a frozen record's own field, set once

    def _context(self) -> TlsFiles:
        """The TLS files of the node's etcd client, read now (etcd_renew.TlsFiles)."""
        certificate = None if self.etcd_cert is None or self.etcd_key is None else (self.etcd_cert, self.etcd_key)
        return TlsFiles.load(self.etcd_ca, certificate)

    def _tokens(self) -> TokenFile | None:
        """The peers' shared tokens, read from token_file now (peer_wire.read_tokens); None without it."""
        if self.token_file is None:
            return None
        try:
            return token_file(self.token_file)
        except Invalid as exc:
            raise Invalid(f"config: cluster.token_file: {exc.reason}") from None

    def _credentials(self) -> Credentials | None:
        """The user of etcd and its password, read from its file now; None without etcd_user."""
        if self.etcd_user is None or self.etcd_password_file is None:
            return None
        return Credentials(self.etcd_user, password_file(self.etcd_password_file))


def settings_of(section: dict, node: str) -> ClusterSettings | None:
    """The cluster settings of a `[cluster]` section, or None (a single node) without `etcd`. In a
    cluster the node's name (daemon.node) is a directory of /nodes and part of etcd keys."""
    if "etcd" not in section:
        return None
    if not isinstance(node, str) or not NODE_NAME.fullmatch(node):
        raise Invalid(f"config: daemon.node {node!r} must be 1-63 letters, digits, '.', '_' or '-' in a cluster")
    return ClusterSettings(**section)
