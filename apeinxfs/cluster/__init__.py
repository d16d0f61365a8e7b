"""apeinxfs as a cluster on etcd (issue 17): for now its foundation, the etcd v3 client.

`etcd.Etcd` talks to etcd's JSON gateway with httpx on trio (KV, transactions, leases,
watches, elections); `etcd_records` holds its records and errors, `etcd_watch` the watch
stream. No FUSE here, and nothing in the kernel depends on this package.
"""
