"""Run submissions through a real Runtime (journal, kernel, drivers) until every task has ended.

For driver tests (openai, triton, llamacpp) that need the whole daemon path but no FUSE.
"""
import trio

from apeinxfs.kernel.events import Kill, Submit
from apeinxfs.kernel.spec import TaskSpec
from test_journal_runtime import open_runtime


async def run_tasks(tmp_path, config_text: str, specs: list[dict], during=None) -> list:
    """Boot from `config_text`, submit `specs`, call `during(rt, pids)`; the tasks once all have ended."""
    with open_runtime(tmp_path, config_text) as rt:
        async with trio.open_nursery() as nursery:
            await nursery.start(rt.run)
            pids = [rt.commit([Submit(spec=TaskSpec(**spec), uid=1000)])[0] for spec in specs]
            if during is not None:
                await during(rt, pids)
            with trio.fail_after(20):
                for pid in pids:
                    while not rt.kernel.tasks[pid].done:
                        await rt.wait_for(pid, 1.0)
            nursery.cancel_scope.cancel()
        return [rt.kernel.tasks[pid] for pid in pids]


def kill_once_served(server, tokens: int = 3):
    """A `during` for run_tasks: kill the first task once it has `tokens` tokens, then wait (5 s at
    most) until `server` (a fake engine) has seen its client close the stream early."""
    async def during(rt, pids):
        while rt.kernel.tasks[pids[0]].tokens_out < tokens:
            await rt.wait_for(pids[0], 1.0)
        rt.commit([Kill(pid=pids[0], uid=1000)])
        with trio.fail_after(5):
            while not server.closed_early:
                await trio.sleep(0.01)
    return during
