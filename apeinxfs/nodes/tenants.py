"""/tenants/NAME/* and /ctl/tenants: tenants as cgroup-style directories.

Each tenant directory holds its settings (weight, members, quota, budget, sandbox:
`KEY VALUE` lines, `max` for unlimited, writes mirror reads, admins only), what it uses
(`usage`), its tasks' trace lines (`events`) and its bill (`bill`). Only admins and the
tenant's own users and viewers see a tenant's directory. /ctl/tenants adds and removes
tenants. Every write becomes a SetTenant or RemoveTenant event (journaled and audited).
Inodes are computed: TENANT_BASE + number * SLOTS + slot, numbers given on first sight (NamedDirs).
"""
import stat

import attrs

from ..kernel.errors import NotFound
from ..kernel.events import RemoveTenant, SetTenant
from ..kernel.grammar import parse_int, split_pairs
from ..kernel.tenancy import budget_limit, quota_limit
from ..kernel.tenant_config import Members, TenantConfig, set_in_group, show_group
from . import billing
from .addremove import AddRemove
from .base import BuiltDir, NamedDirs, Setting, Show
from .ctl import by, run_lines
from .ringlog import RingLog
from .tasks import PID_BASE

TENANT_BASE = 1 << 19
SLOTS = 16
GROUPS = ("members", "quota", "budget", "sandbox")
FILES = ("weight", *GROUPS, "usage", "events", "bill")
ADMIN_WRITES = stat.S_IFREG | 0o644


def usage(kernel, name: str, now_us: int) -> str:
    """What the tenant holds and has used, flat keyed."""
    tenant, used = kernel.tenancy.tenants[name], kernel.tenancy.usage_of(name)
    entity = kernel.accounts.of_tenant(name)
    quota_used, _ = used.quota.view(quota_limit(tenant), now_us)
    budget_used, debt = used.budget.view(budget_limit(tenant), now_us)
    remaining = "max" if tenant.budget.tokens is None else max(0, tenant.budget.tokens - debt - budget_used)
    rows = [("tasks", used.live), ("running", entity.running if entity else 0),
            ("held", sum(t.runnable for t in used.held)),
            ("kv_pages", sum(t.kv_pages for g in kernel.gpus for t in g.running.values() if t.tenant == name)),
            ("tokens_in", used.tokens_in), ("tokens_out", used.tokens_out), ("reserved", used.reserved),
            ("quota_tokens_used", quota_used), ("budget_used", budget_used), ("budget_debt", debt),
            ("budget_remaining", remaining), ("overdraws", used.overdraws)]
    return "".join(f"{key} {value}\n" for key, value in rows)


def settings_writer(rt, name: str, file: str, change):
    """A write function whose lines each change the tenant (`change(tenant, line)`), in order."""
    def run(lines, caller):
        current = [_tenant(rt, name)]

        def to_event(line, c):
            c.identity.require("admin", f"changing tenant {name}")
            current[0] = change(current[0], line.strip())
            return SetTenant(tenant=current[0], what=f"set {file}: {line.strip()}", **by(c))
        return run_lines(rt, lines, caller, to_event)
    return run


def _tenant(rt, name: str) -> TenantConfig:
    tenant = rt.kernel.tenancy.config_of(name)
    if tenant is None:
        raise NotFound(f"no tenant {name!r}")
    return tenant


def _group_change(group: str):
    return lambda tenant, line: attrs.evolve(tenant, **{group: set_in_group(getattr(tenant, group), line)})


def _weight_change(tenant, line):
    return attrs.evolve(tenant, weight=parse_int(line, "weight"))


def _group_file(rt, name: str, group: str):
    """The builder of /tenants/NAME/GROUP: the group's KEY VALUE lines, written by admins."""
    return lambda: _setting(rt, name, group, lambda: show_group(getattr(_tenant(rt, name), group)),
                            _group_change(group))


def _setting(rt, name: str, file: str, show, change) -> Setting:
    """/tenants/NAME/FILE, showing `show()` and set by admins through `change(tenant, line)`."""
    return Setting(mode=ADMIN_WRITES, show=show, run=settings_writer(rt, name, file, change), write_role="admin",
                   writes=rt.writes)


def _files(rt, name: str) -> dict:
    """Builders of a tenant's files, by name."""
    kernel = rt.kernel
    return {
        "weight": lambda: _setting(rt, name, "weight", lambda: f"{_tenant(rt, name).weight}\n", _weight_change),
        **{group: _group_file(rt, name, group) for group in GROUPS},
        "usage": lambda: Show(show=lambda: usage(kernel, name, rt.clock.now_us()), volatile=True),
        "events": lambda: RingLog.of(kernel.trace, source=lambda: kernel.trace.tenant_view(name)),
        "bill": lambda: Show(show=lambda: billing.show(kernel, name)),
    }


@attrs.define(eq=False)
class TenantDir(BuiltDir):
    """/tenants/NAME: its files are built when asked for, each scoped to the tenant."""

    names: tuple = FILES
    rt: object = None
    name: str = ""

    def build(self, name):
        return _files(self.rt, self.name)[name]()


@attrs.define(eq=False)
class TenantsDir(NamedDirs):
    """/tenants: one directory per tenant, in the order they were defined."""

    base: int = TENANT_BASE
    limit: int = PID_BASE
    slots: int = SLOTS
    rt: object = None

    def current(self):
        return self.rt.kernel.tenancy.tenants

    def make(self, name, inode):
        return TenantDir(inode=inode, rt=self.rt, name=name, tenant=name)


def tenants_ctl(rt):
    """/ctl/tenants: `add NAME [weight=N] [uids=..] [gids=..] [viewer_uids=..] [viewer_gids=..]`, `remove NAME`.
    A bare `add` is refused by the tenant's name check."""
    return AddRemove(
        doing="tenant administration",
        usage="expected `add NAME [weight=N] [uids=1,2] [gids=..] [viewer_uids=..] [viewer_gids=..]` "
              "or `remove NAME`",
        add=lambda rest, **who: SetTenant(tenant=_new_tenant(rest), **who),
        remove=lambda name, **who: RemoveTenant(name=name, **who), bare_add=True).command(rt)


def _new_tenant(text: str) -> TenantConfig:
    name, _, rest = text.strip().partition(" ")
    pairs = split_pairs(rest, known={"weight", *Members.KEYS}) if rest.strip() else {}
    members = {key: Members.KEYS[key][1](value, key) for key, value in pairs.items() if key != "weight"}
    weight = parse_int(pairs["weight"], "weight") if "weight" in pairs else 100
    return TenantConfig(name=name, weight=weight, members=members)
