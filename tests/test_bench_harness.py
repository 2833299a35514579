"""The benchmark harness's cold-call helpers: they must leave the data as it was and call
``before`` once per timed call, never inside the timed region."""
import torch

from sparse_attn.benchmark.harness import cache_evictor, code_warmer, data_evictor, time_fn, time_interleaved


def test_data_evictor_keeps_contents_and_covers_every_tensor():
    a = torch.randn(3, 1000)
    b = torch.randn(17, dtype=torch.bfloat16)[3:]  # a view: its whole storage is flushed
    a0, b0 = a.clone(), b.clone()
    evict = data_evictor(a, b)
    evict()
    evict()
    assert torch.equal(a, a0) and torch.equal(b, b0)
    if evict.kind == "data":  # x86: exactly the two storages
        assert evict.nbytes == a.untyped_storage().nbytes() + b.untyped_storage().nbytes()
    else:  # elsewhere it falls back to reading past the last-level cache
        assert evict.kind == "all" and evict.nbytes >= 256 << 20


def test_cache_evictor_size():
    evict = cache_evictor(1 << 20)
    evict()
    assert evict.kind == "all" and evict.nbytes == 1 << 20


def test_before_runs_once_per_timed_call_only():
    log = []
    t = time_fn(lambda: log.append("call"), [()], warmup=2, repeats=3, before=lambda: log.append("before"))
    assert log == ["call", "call"] + ["before", "call"] * 3
    assert len(t["times"]) == 3

    log.clear()
    time_interleaved({"x": (lambda: log.append("x"), [()]), "y": (lambda: log.append("y"), [()])},
                     warmup=1, repeats=2, before=lambda: log.append("before"))
    assert log == ["x", "y"] + ["before", "x", "before", "y"] * 2


def test_garbage_collector_paused_while_timing_and_restored():
    import gc

    seen = []
    assert gc.isenabled()
    time_fn(lambda: seen.append(gc.isenabled()), [()], warmup=1, repeats=2)
    time_interleaved({"x": (lambda: seen.append(gc.isenabled()), [()])}, warmup=1, repeats=2)
    assert seen == [True, False, False, True, False, False]  # warm-up calls run with it on
    assert gc.isenabled()
    gc.disable()
    try:
        time_fn(lambda: None, [()], repeats=1)
        assert not gc.isenabled()  # left as the caller had it
    finally:
        gc.enable()


def test_warm_runs_after_before_and_only_for_its_fn():
    log = []
    time_interleaved({"x": (lambda: log.append("x"), [()]), "y": (lambda: log.append("y"), [()])},
                     warmup=1, repeats=2, before=lambda: log.append("before"),
                     warm={"x": code_warmer(lambda: log.append("wx1"), lambda: log.append("wx2"))})
    assert log == ["x", "y"] + ["before", "wx1", "wx2", "x", "before", "y"] * 2


def test_projection_standin_is_a_matrix_vector_product_of_the_size_asked():
    from sparse_attn.benchmark.harness import projection_standin

    y = projection_standin(1 << 20)()
    assert y.shape == (512,) and y.dtype == torch.bfloat16
