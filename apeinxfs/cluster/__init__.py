"""apeinxfs as a cluster on etcd (issue 17; docs/cluster.md).

The etcd v3 client: `etcd.Etcd` talks to etcd's JSON gateway with httpx on trio (KV,
transactions, leases, watches, elections); `etcd_records` holds its records and errors,
`etcd_watch` the watch stream. The daemon's part: `settings` ([cluster]), `records`
(what a node publishes, the key layout), `view` (every node as seen through the watch),
`member` (lease, epoch, leader campaign), `pids` (pid blocks), `daemon` (`Cluster`, run
by the runtime). No FUSE here; the kernel knows only the `PidBlock` events it is given.
"""
