"""/README: the short man page of the tree, readable from the mount itself."""

TEXT = """\
apeinxfs - an AI kernel whose API is this tree (see apeinxfs(5) for the full page)

  README              this text
  ctl/submit          w: one task per line; open rw, write, read back "PID" or "error: ..."
  ctl/kill            w: PID
  tasks/PID/status    Key:<TAB>value (Name Pid PPid Tenant Uid Model State Prio Weight
                      Vruntime TokensIn TokensOut TokensMax KVPages Exit ...)
  tasks/PID/ctl       w: kill | stop | cont | prio N
  tasks/PID/prompt    the prompt
  tasks/PID/output    text so far; grows (tail -f works)
  tasks/PID/stream    blocks like a pipe; text as it is generated; EOF when the task ends
  tasks/PID/wait      blocks until the task ends; then: done | killed | oom-killed |
                      expired | failed: REASON
  tasks/PID/events    this task's trace lines
  tasks/PID/children  pids of the tasks submitted with parent=PID, one per line
  models/NAME/        status, config
  memory/meminfo      KV cache, /proc/meminfo layout
  memory/pressure     KV stall time, PSI format
  trace/events        CSV: seq,time_us,type,pid,tenant,model,gpu,node,detail
  replay/PID          one task's timeline rebuilt from the trace
  sched/policy        rw: fair | vtc | fcfs | greedy (writes mirror reads; switches live)
  sched/runqueue      entity counter weight state: tenant/NAME rows, agent/PID rows
  sched/stat          policy queued running decisions preemptions ... ("key value")
  metrics             Prometheus text format

Submit lines (several per write; lines split across writes are joined):
  NAME TOKENS PRIORITY [DEADLINE]                      job1 1000 5 30s
  name=job1 max_tokens=64 prio=5 model=M tenant=T deadline=30s prompt="hi\\nthere"
  {"name": "job1", "prompt": "...", "max_tokens": 64, "prio": 5}
  prio 0..9 (higher first, default 5); deadline 30 | 30s | 500ms | 2m.
  parent=PID: a child of task PID (its tenant; killed with it; PID's wait covers it).

Errors fail the write(2): EINVAL malformed, ENOENT unknown pid/model/tenant,
ENOSPC can never fit in KV memory, EBUSY wrong task state. The reason is replied on
the same fd and written to trace/events.
"""


def show() -> str:
    return TEXT
