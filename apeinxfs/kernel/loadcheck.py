"""What a kernel loaded from a snapshot must hold that loading it did not check.

pickle builds each attrs object without its validators (NEWOBJ, then its __setstate__), so a
snapshot's names and numbers reach the kernel unchecked. Here, after loading (state.decode),
the fields that become the tree's names or the kernel's arithmetic are checked as their
validators would: the tenants' and models' names (/tenants/NAME, /models/NAME), each task's
pid (/tasks/PID) and tenant, and the models' prices (exact decimals the bill multiplies).
Not every field: attrs.validate on every attrs object reached took 3.6 times the load of a
20,000-task state. A task's uid out of bounds is shown as OVERFLOW_ID (state.ids_in_bounds).
Pure: no I/O.
"""
import attrs

from .access import PID_MAX, id_fits
from .errors import Invalid
from .kernel import Kernel
from .spec import Validator, check_entry_name, check_name

TENANT, MODEL = check_name("tenant"), check_entry_name("model")


def checked(kernel: Kernel) -> None:
    """Invalid, in words, at the first name, pid or price of `kernel` that its validator would refuse."""
    for name, tenant in kernel.tenancy.tenants.items():
        _keyed(TENANT, name, tenant.name)
    for name, model in kernel.models.items():
        _keyed(MODEL, name, model.name)
        attrs.evolve(model.price)  # its converters: a finite price >= 0, below PRICE_MAX
    for pid, task in kernel.tasks.items():
        if pid != task.pid or not id_fits(pid, PID_MAX):
            raise Invalid(f"task {str(pid)[:40]} is not a pid in 0..{PID_MAX} or not its own")
        TENANT(None, None, task.tenant)


def _keyed(check: Validator, key: str, name: str) -> None:
    check(None, None, name)
    if key != name:
        raise Invalid(f"{name} is held under another name, {str(key)[:40]}")
