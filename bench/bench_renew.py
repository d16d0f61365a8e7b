"""What looking for renewed TLS files costs the etcd client's requests (apeinxfs/cluster/etcd_renew.py).

One etcd member serving https with `--client-cert-auth` (tests/etcd_pki.py's throwaway PKI)
and two clients of it: the subject, whose transport is `Renewing` over TlsFiles (a clock
reading per request, the stat of three files once a second, a wrapped response body), and
the baseline, the same client with a plain httpx transport of the same SSL context.
Linearizable one-key gets, 1 and 16 concurrent, BENCH_ROUNDS rounds of BENCH_SECONDS each,
subject and baseline alternating; medians and the ratio subject / baseline. Then, in
process, the cost of one `TlsFiles.current` when no look is due and of one look (`check`:
three stats). A figure to watch, with no target (not in bench/run).
"""
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

from common import ROUNDS, SECONDS, concurrent_rate, median
from etcd_pki import make_pki, tls_etcd

from apeinxfs.cluster.etcd import Etcd, transport_of
from apeinxfs.cluster.etcd_renew import TlsFiles

WORKERS = (1, 16)
CALLS = 100_000


def files_of(pki) -> TlsFiles:
    return TlsFiles.load(pki("ca.pem"), (pki("anonymous.pem"), pki("anonymous.key")))


async def measure(url: str, pki) -> dict:
    """{(client, workers): [gets per second per round]}, subject and baseline alternating."""
    rates: dict = {(name, workers): [] for name in ("renewing", "plain") for workers in WORKERS}
    async with Etcd([url], tls=files_of(pki)) as renewing, Etcd([url], tls=files_of(pki)) as plain:
        await plain.http.aclose()
        plain.http = httpx.AsyncClient(timeout=renewing.http.timeout, trust_env=False,
                                       transport=transport_of(plain.tls.context))
        clients = {"renewing": renewing, "plain": plain}
        await renewing.put(b"bench/read", b"x")
        for _ in range(ROUNDS):
            for (name, workers), found in rates.items():
                found.append(await concurrent_rate(lambda worker: clients[name].get(b"bench/read"), workers))
    return rates


def per_call_us(action) -> float:
    start = time.perf_counter()
    for _ in range(CALLS):
        action()
    return (time.perf_counter() - start) / CALLS * 1e6


def main() -> int:
    if not shutil.which("etcd") or not shutil.which("openssl"):
        print("etcd and openssl are needed (scripts/setup installs etcd-server)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        pki = make_pki(Path(tmp) / "pki")
        with tls_etcd(Path(tmp) / "etcd", pki) as member:
            rates = trio.run(measure, member.client_url, pki)
        files = files_of(pki)
        files.check(0.0)
        due, look = per_call_us(lambda: files.current(0.5)), per_call_us(lambda: files.check(0.0))
    print(f"one https member, {ROUNDS} rounds of {SECONDS:g} s per measure, get/s medians:")
    for workers in WORKERS:
        subject, baseline = median(rates[("renewing", workers)]), median(rates[("plain", workers)])
        print(f"{workers:3} workers: renewing {subject:8,.0f}  plain {baseline:8,.0f}  ratio {subject / baseline:.3f}"
              f"   rounds {[round(r) for r in rates[('renewing', workers)]]} vs "
              f"{[round(r) for r in rates[('plain', workers)]]}")
    print(f"TlsFiles.current, no look due: {due:.2f} us a call; a look (3 stats, unchanged): {look:.2f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
