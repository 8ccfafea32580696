# Driven by TestInteropNbdsh: negotiates option by option with libnbd's own
# client against qcdp's server and asserts every answer. The exports are
# "w" (writable sparse file), "r" (read-only) and "rec" (write-only).
# Exits non-zero with the failing assertion on stderr; prints PASS at the end.
import errno
import os

import nbd

sock = os.environ["QCDP_SOCK"]
size = int(os.environ["QCDP_SIZE"])

h = nbd.NBD()
h.set_opt_mode(True)
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_unix(sock)
assert h.aio_is_negotiating(), "not negotiating after connect in opt mode"

names = []
count = h.opt_list(lambda name, desc: names.append(name))
assert sorted(names) == ["r", "rec", "w"], names
assert count == 3, count

# An unknown export fails opt_info and leaves the handle negotiating.
h.set_export_name("no-such-export")
try:
    h.opt_info()
    raise AssertionError("opt_info of an unknown export succeeded")
except nbd.Error as e:
    assert "no-such-export" in (e.string or "") or e.errno is not None, e
assert h.aio_is_negotiating(), "handle left negotiation after a failed opt_info"

h.set_export_name("w")
h.opt_info()
assert h.get_size() == size, h.get_size()
assert not h.is_read_only()
assert h.get_block_size(nbd.SIZE_MINIMUM) == 1, h.get_block_size(nbd.SIZE_MINIMUM)
assert h.get_block_size(nbd.SIZE_PREFERRED) == 4096
assert h.get_block_size(nbd.SIZE_MAXIMUM) == 32 << 20

ctxs = []
n = h.opt_list_meta_context(lambda name: ctxs.append(name))
assert ctxs == [nbd.CONTEXT_BASE_ALLOCATION], ctxs
assert n == 1, n

h.opt_go()
assert h.aio_is_ready(), "not ready after opt_go"
assert h.get_structured_replies_negotiated()
for cap in ("can_fua", "can_flush", "can_trim", "can_zero", "can_fast_zero",
            "can_multi_conn", "can_df", "can_cache"):
    assert getattr(h, cap)(), cap
assert h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
assert h.get_block_size(nbd.SIZE_MINIMUM) == 1

# Odd sizes at odd offsets, FUA, zero, trim, flush.
a = bytes((i * 13 + 7) & 0xFF for i in range(1000))
h.pwrite(a, 3 * 4096 + 123)
assert h.pread(1000, 3 * 4096 + 123) == a
b = b"\x5a" * 100
h.pwrite(b, 20001, nbd.CMD_FLAG_FUA)
assert h.pread(100, 20001) == b
h.zero(50, 3 * 4096 + 200)
assert h.pread(1000, 3 * 4096 + 123) == a[:77] + bytes(50) + a[127:]
h.zero(4096, 2 << 20, nbd.CMD_FLAG_NO_HOLE)
assert h.pread(4096, 2 << 20) == bytes(4096)
h.trim(65536, 1 << 20)
h.flush()
h.cache(4096, 0)

# Block status: the file has data at [0, 4096) and [1 MiB, 1 MiB + 128 KiB)
# from the test; the trim above made [1 MiB, 1 MiB + 64 KiB) a hole.
seen = []
def extent(ctx, offset, entries, err):
    assert ctx == nbd.CONTEXT_BASE_ALLOCATION, ctx
    seen.append((offset, list(entries)))
h.block_status(size, 0, extent)
assert len(seen) == 1 and seen[0][0] == 0, seen
ents = seen[0][1]
assert len(ents) % 2 == 0 and len(ents) >= 2, ents
assert sum(ents[0::2]) <= size
assert ents[0] == 4096 and ents[1] == 0, ents  # first 4 KiB is data
runs, pos = [], 0
for length, flags in zip(ents[0::2], ents[1::2]):
    runs.append((pos, length, flags))
    pos += length
at1m = [r for r in runs if r[0] <= 1 << 20 < r[0] + r[1]]
assert at1m and at1m[0][2] == nbd.STATE_HOLE | nbd.STATE_ZERO, (at1m, runs)
assert at1m[0][0] + at1m[0][1] == (1 << 20) + 65536, ("trimmed hole ends", runs)
after = [r for r in runs if r[0] == (1 << 20) + 65536]
assert after and after[0][2] == 0, ("data after the trim", runs)
one = []
h.block_status(size, 0, lambda c, o, e, err: one.append(list(e)), nbd.CMD_FLAG_REQ_ONE)
assert one == [[4096, 0]], one
h.shutdown()

# A second handle aborts negotiation cleanly.
h2 = nbd.NBD()
h2.set_opt_mode(True)
h2.connect_unix(sock)
assert h2.aio_is_negotiating()
h2.opt_abort()
assert h2.aio_is_closed(), h2.connection_state()

# The read-only export: read-only, writes refused.
h3 = nbd.NBD()
h3.set_export_name("r")
h3.connect_unix(sock)
assert h3.is_read_only()
assert not h3.can_trim() and not h3.can_zero() and not h3.can_fua()
try:
    h3.pwrite(b"x", 0)
    raise AssertionError("write to a read-only export succeeded")
except nbd.Error as e:
    assert e.errnum == errno.EPERM, (e.errnum, e)
assert h3.pread(4096, 0)[:16] == bytes.fromhex(os.environ["QCDP_HEAD"]), "read-only data"
h3.shutdown()

# The write-only capture export: reads fail with ENOTSUP from the server.
h4 = nbd.NBD()
h4.set_export_name("rec")
h4.set_strict_mode(0)
h4.connect_unix(sock)
h4.pwrite(b"rec", 7)
try:
    h4.pread(16, 0)
    raise AssertionError("read of a write-only export succeeded")
except nbd.Error as e:
    assert e.errnum in (errno.ENOTSUP, errno.EOPNOTSUPP), (e.errnum, e)
h4.shutdown()
print("PASS")
