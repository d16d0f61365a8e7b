"""/replay/PID: one task's timeline, rebuilt from its trace lines (which the journal rebuilds)."""
import csv
import io


def show(kernel, task) -> str:
    rows = list(csv.DictReader(io.StringIO(kernel.trace.of_task(task).decode())))
    head = f"pid {task.pid} {task.spec.name} model={task.model} tenant={task.tenant} exit={task.exit or '-'}\n"
    if not rows:
        return head
    start = int(rows[0]["time_us"])
    lines = [f"{(int(r['time_us']) - start) / 1e6:+12.6f}s  {r['type']:<12} "
             f"{'gpu=' + r['gpu'] + ' ' if r['gpu'] else ''}{r['detail']}\n" for r in rows]
    return head + "".join(lines)
