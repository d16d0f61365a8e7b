"""/README: the short man page of the tree, readable from the mount itself."""

TEXT = """\
apeinxfs - an AI kernel whose API is this tree (see apeinxfs(5) for the full page)

  README              this text
  ctl/submit          w: one task per line; open rw, write, read back "PID" or "error: ..."
  ctl/kill            w: PID
  ctl/tenants         w (admins): add NAME [weight=N] [uids=..] [gids=..] [viewer_uids=..] | remove NAME
  ctl/models          w (admins): add NAME driver=D url=.. [context=N] [layers=..] [OPTION=..] | remove NAME
  ctl/policy          rw (admins write): deny|allow|limit rules, first match wins (> replaces, >> appends)
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
  models/NAME/        status, config, engine (its engine's own KV and queue metrics)
  memory/meminfo      KV cache, /proc/meminfo layout
  memory/pressure     KV and down-engine stall time, PSI format
  trace/events        CSV: seq,time_us,type,pid,tenant,model,gpu,node,detail (admins)
  trace/audit         CSV: seq,time_us,uid,pid,tenant,action,result,detail (admins)
  replay/PID          one task's timeline rebuilt from the trace
  sched/policy        rw: fair | vtc | fcfs | greedy (writes mirror reads; switches live)
  sched/runqueue      entity counter weight state: tenant/NAME rows, agent/PID rows
                      (every tenant's for admins, else the caller's own tenant's)
  sched/stat          policy queued running decisions preemptions ... ("key value")
  tenants/NAME/       weight members quota budget sandbox (KEY VALUE, max = unlimited,
                      writes mirror reads, admins write); usage events bill
  billing             CSV per period, tenant, model: tokens, gpu/kv-page seconds, cost (admins)
  metrics             Prometheus text format
  health              State: ok | degraded (then Errno, Reason, Since): whether the journal
                      can be written; degraded, state changes fail with Errno and tasks pause;
                      then Warning while snapshots fail or the daemon's time is ahead of
                      the host's, and a Bug row per loop that met a bug

Submit lines (several per write; lines split across writes are joined):
  NAME TOKENS PRIORITY [DEADLINE]                      job1 1000 5 30s
  name=job1 max_tokens=64 prio=5 model=M tenant=T deadline=30s prompt="hi\\nthere"
  {"name": "job1", "prompt": "...", "max_tokens": 64, "prio": 5}
  prio 0..9 (higher first, default 5); deadline 30 | 30s | 500ms | 2m.
  parent=PID: a child of task PID (its tenant; killed with it; PID's wait covers it).
  Sampling (key=value, JSON): temperature 0..2, top_p 0..1, top_k 1..100000,
  seed 0..4294967295, stop=A|B (or repeated; JSON: a list; at most 4),
  presence_penalty, frequency_penalty -2..2. Unset: the engine's default.

Errors fail the write(2): EINVAL malformed, ENOENT unknown pid/model/tenant (or
another tenant's), EACCES your role may not (or a policy rule denies), EDQUOT quota or
budget exhausted, ENOSPC can never fit in KV memory, EBUSY wrong task state. The reason
is replied on the same fd and written to trace/events.
"""


def show() -> str:
    return TEXT
