"""Property tests of the stream-K partition (csrc/include/sparse_attn/stream_k.h), through
the sparse_attn._C.stream_k_segments binding."""
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse_attn import _C

tiles = st.lists(st.integers(min_value=0, max_value=40), min_size=0, max_size=30)
workers = st.integers(min_value=1, max_value=70)


def check_partition(tiles_per_output, num_workers):
    segs = _C.stream_k_segments(tiles_per_output, num_workers)
    assert len(segs) == num_workers
    total = sum(tiles_per_output)
    offsets = [0]
    for n in tiles_per_output:
        offsets.append(offsets[-1] + n)
    covered = []  # global tiles in worker order
    sizes = []
    hosts = {}
    for w, worker_segs in enumerate(segs):
        size = 0
        for i, (o, b, e, host) in enumerate(worker_segs):
            assert 0 <= o < len(tiles_per_output) and 0 <= b < e <= tiles_per_output[o]
            assert host == (b == 0)
            if not host:
                assert i == 0, "a non-host segment must be the worker's first"
            else:
                assert o not in hosts, "an output has two hosts"
                hosts[o] = w
            covered += list(range(offsets[o] + b, offsets[o] + e))
            size += e - b
        sizes.append(size)
    # ranges cover [0, T) exactly once, in order
    assert covered == list(range(total))
    # sizes differ by at most one, the first T mod W workers holding the extra tile
    q, r = divmod(total, num_workers)
    assert sizes == [q + 1] * r + [q] * (num_workers - r)
    # every non-empty output has exactly one host, and it holds the output's first tile
    assert set(hosts) == {o for o, n in enumerate(tiles_per_output) if n > 0}


@settings(max_examples=300, deadline=None)
@given(tiles, workers)
def test_partition_properties(tiles_per_output, num_workers):
    check_partition(tiles_per_output, num_workers)


def test_more_workers_than_tiles_and_empty():
    check_partition([1, 0, 2], 10)
    check_partition([], 3)
    check_partition([0, 0], 2)
    assert _C.stream_k_segments([0, 3, 0, 2, 5], 3) == [
        [(1, 0, 3, True), (3, 0, 1, True)], [(3, 1, 2, False), (4, 0, 2, True)], [(4, 2, 5, False)]]
