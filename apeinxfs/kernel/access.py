"""Who a caller is: its role (admin, user, viewer, none) and tenant, from its Unix ids.

- admin: root, the daemon's owner, and the uids/gids of [access]; may do anything and
  sees every tenant.
- user: a uid or gid in a tenant's `members` (uids, gids); submits into that tenant and
  acts on its tasks.
- viewer: a uid or gid in a tenant's viewer_uids/viewer_gids; reads that tenant only.
- anyone else: [access] unmapped (user, viewer or none) in the tenant "default".
A non-admin sees only its own tenant, like a PID namespace: others' tasks are ENOENT.
The ids a caller may carry are bounded as the system's types bound them (UID_MAX, PID_MAX):
records that carry one check it (`id_bound`), so no path admits an id the mount cannot show.
Pure functions of the kernel's tenants and the access config; fs.py asks once per request
(and keeps the answer while the kernel is unchanged, unless supplementary groups count).
"""
from collections.abc import Callable, Iterable, Mapping

import attrs

from .config import AccessConfig
from .errors import Denied, Invalid
from .tenant_config import TenantConfig

RANKS = {"none": 0, "viewer": 1, "user": 2, "admin": 3}
UID_MAX = 2 ** 32 - 2  # uid_t and gid_t hold 0..2**32-1, and 2**32-1 is (uid_t)-1: "no id"
PID_MAX = 2 ** 31 - 1  # pid_t
OVERFLOW_ID = 65534  # what Linux shows for an id it cannot map (overflowuid, "nobody"): here, for one out of bounds


def id_fits(value: object, highest: int) -> bool:
    """Whether `value` is an int (not a bool) in 0..highest."""
    return type(value) is int and 0 <= value <= highest


def id_bound(highest: int, what: str = "an id") -> Callable[[object, "attrs.Attribute[int]", object], None]:
    """An attrs validator: Invalid unless the field is an int in 0..highest (`what` it must be, in words)."""
    def check(instance: object, attribute: "attrs.Attribute[int]", value: object) -> None:
        if not id_fits(value, highest):
            raise Invalid(f"{attribute.name} {str(value)[:40]} is not {what} in 0..{highest}")
    return check


@attrs.frozen
class Identity:
    """A caller as the kernel sees it."""

    uid: int
    role: str
    tenant: str | None

    @property
    def admin(self) -> bool:
        return self.role == "admin"

    def sees(self, tenant: str | None) -> bool:
        """Whether things of `tenant` (None: of no tenant) exist for this caller."""
        return tenant is None or self.admin or (self.tenant == tenant and self.role != "none")

    def require(self, role: str, what: str) -> None:
        """Raise EACCES, saying who and what, unless this caller has at least `role`."""
        if RANKS[self.role] < RANKS[role]:
            where = f" of tenant {self.tenant}" if self.tenant else ""
            raise Denied(f"uid {self.uid} is {self.role}{where}: {what} needs {role}")


def identify(tenants: Mapping[str, TenantConfig], access: AccessConfig, uid: int, gid: int,
             groups: Callable[[], Iterable[int]]) -> Identity:
    """The caller's identity; `groups()` (supplementary gids) is asked only if a gid could matter."""
    gids = {gid} | (set(groups()) if uses_gids(tenants, access) else set())
    if uid in (0, access.owner_uid) or uid in access.admin_uids or gids & set(access.admin_gids):
        return Identity(uid, "admin", _member_tenant(tenants, uid, gids, "uids", "gids") or _default(tenants))
    for kind, uid_key, gid_key in (("user", "uids", "gids"), ("viewer", "viewer_uids", "viewer_gids")):
        tenant = _member_tenant(tenants, uid, gids, uid_key, gid_key)
        if tenant:
            return Identity(uid, kind, tenant)
    return Identity(uid, access.unmapped, _default(tenants))


def _member_tenant(tenants: Mapping[str, TenantConfig], uid: int, gids: set[int],
                   uid_key: str, gid_key: str) -> str | None:
    for tenant in tenants.values():
        members = tenant.members
        if uid in getattr(members, uid_key) or gids & set(getattr(members, gid_key)):
            return tenant.name
    return None


def uses_gids(tenants: Mapping[str, TenantConfig], access: AccessConfig) -> bool:
    """Whether any gid grants a role: if not, identities depend on uid and gid alone."""
    return bool(access.admin_gids) or any(t.members.gids or t.members.viewer_gids for t in tenants.values())


def _default(tenants: Mapping[str, TenantConfig]) -> str | None:
    return "default" if "default" in tenants else None
