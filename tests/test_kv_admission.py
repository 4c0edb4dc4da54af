"""KV admission with branches (patches/admission.py, sched/extend.py): SGLang holds back
what a unit can still write, not each branch's own large budget, and extend steps that
do not fit in KV wait instead of reaching the allocator."""

from __future__ import annotations

import asyncio
import inspect
from types import SimpleNamespace

import pytest
from npr_engine.patches.admission import unit_share

from npr_engine.sched.state import Phase
from tests.support.engine import assert_idle, forced, params, start_engine, stop_engine


def _req(out_len: int, max_new: int, ignore_eos: bool):
    return SimpleNamespace(output_ids=[0] * out_len,
                           sampling_params=SimpleNamespace(max_new_tokens=max_new, ignore_eos=ignore_eos))


def _unit(own: list[int], max_new: int = 200, prompt_out: int = 50, max_path_tokens=None):
    """A root that forked after `prompt_out` tokens into branches with `own` tokens each."""
    block = SimpleNamespace(branches=[], spliced=0, uncommitted=1)
    root = SimpleNamespace(req=_req(prompt_out, max_new, ignore_eos=False), fork_out_len=0, child=block)
    unit = SimpleNamespace(root=root)
    for k in own:
        req = _req(prompt_out + k, max_new + 64, ignore_eos=True)  # as forking.py makes branches
        seq = SimpleNamespace(req=req, unit=unit, block=block, fork_out_len=prompt_out, child=None,
                              phase=Phase.ACTIVE,
                              is_branch=True, options=SimpleNamespace(max_path_tokens=max_path_tokens),
                              own_tokens=lambda k=k: k)
        req.npr = seq
        block.branches.append(seq)
    return unit


def _stock():
    from sglang.srt.managers.schedule_policy import PrefillAdder

    return inspect.unwrap(PrefillAdder._get_running_request_total_token_offset)


def test_branches_reserve_what_their_unit_can_still_write():
    stock, adder = _stock(), SimpleNamespace(new_token_ratio=0.5)
    unit = _unit([10, 20, 30, 40])  # 8 paths would hold 8 times as much
    reqs = [b.req for b in unit.root.child.branches]
    stock_total = sum(stock(adder, r) for r in reqs)
    ours = [unit_share(stock, adder, r) for r in reqs]
    left = 200 - 50 - (10 + 20 + 30 + 40)  # the root's max_new_tokens less the unit's tokens
    assert stock_total == sum(264 - 50 - k for k in (10, 20, 30, 40))  # ignore_eos: ratio 1
    # At the new-token ratio (0.5; a unit short of KV is retracted whole and rebuilt), +2
    # per branch: its copy of the one uncommitted token and the step being decided.
    assert left * 0.5 + 4 * 2 <= sum(ours) <= (left + 3) * 0.5 + 4 * 2
    assert stock_total > 3 * sum(ours)
    # A path budget caps a branch's share; a spent unit holds back only the +2.
    capped = _unit([10, 20], max_path_tokens=24)
    assert [unit_share(stock, adder, b.req) for b in capped.root.child.branches] == [14 * 0.5 + 2, 4 * 0.5 + 2]
    spent = _unit([80, 70])
    assert [unit_share(stock, adder, b.req) for b in spent.root.child.branches] == [2, 2]
    # A root that ignores EOS writes its whole budget: ratio 1.
    fixed = _unit([10, 20])
    fixed.root.req.sampling_params.ignore_eos = True
    assert [unit_share(stock, adder, b.req) for b in fixed.root.child.branches] == [(200 - 80) / 2 + 2] * 2
    # Requests that are not branches keep SGLang's own estimate.
    plain = _req(5, 100, ignore_eos=False)
    assert unit_share(stock, adder, plain) == stock(adder, plain) == 95 * 0.5


BUSY_CHECK = "SGLANG_ENABLE_STRICT_MEM_CHECK_DURING_BUSY"


@pytest.fixture(scope="module")
def tight(default_model_dir):
    # SGLang's own KV invariant check on every busy step too (the idle one is on by default).
    llm = start_engine(
        env={BUSY_CHECK: "1"},
        model_path=str(default_model_dir), device="cpu", attention_backend="torch_native",
        disable_cuda_graph=True, dtype="float32", max_total_tokens=1024, random_seed=0, log_level="error",
        enable_custom_logit_processor=True,  # NOTE: in-process settings are global (see test_pressure)
    )
    try:
        yield llm
    finally:
        stop_engine(llm)


def test_many_forks_in_a_small_pool_finish_without_crash_loss_or_leak(tight, engine):
    # The load that crashed the server: many concurrent forced 4-path blocks in a small
    # pool, real KV pressure (no test switch), SGLang's invariant checks on.
    prompts = [f"Question {i}: why is the sky blue?" for i in range(32)]

    def run(llm):
        async def go():
            tasks = [llm.async_generate(p, params(120, forced(4))) for p in prompts]
            return await asyncio.gather(*tasks, return_exceptions=True)

        return llm.loop.run_until_complete(go())

    outs = run(tight)
    # Nothing is lost to KV pressure: every request completes (none aborted, no 503).
    assert all(isinstance(o, dict) for o in outs), [o for o in outs if isinstance(o, BaseException)]
    assert all(o["meta_info"]["finish_reason"]["type"] in ("length", "stop") for o in outs)
    retractions = sum(o["meta_info"]["npr_trace"]["retractions"] for o in outs)
    plain = sum(o["meta_info"]["num_retractions"] for o in outs) - retractions
    print(f"32 forked requests in a 1024-token pool: {retractions} unit retractions (rebuilt), "
          f"{plain} other")
    assert retractions >= 1, "no real KV pressure: the load no longer reproduces the crash"
    assert all(o["meta_info"]["completion_tokens"] <= 120 for o in outs)
    # Retracted units continued where they stopped: the tokens of a pool that never fills.
    reference = run(engine)
    assert [o["output_ids"] for o in outs] == [r["output_ids"] for r in reference]
    assert_idle(tight)
    assert tight.generate("Hi", params(4))["meta_info"]["completion_tokens"] == 4


def test_extend_steps_that_do_not_fit_wait_in_order(monkeypatch):
    from npr_engine.sched import extend

    monkeypatch.setattr(extend, "build_extend_batch", lambda scheduler, reqs: list(reqs))
    allocator = SimpleNamespace(size=100, available_size=lambda: 10)
    scheduler = SimpleNamespace(token_to_kv_pool_allocator=allocator,
                                tree_cache=SimpleNamespace(evictable_size=lambda: 2))
    queue = extend.ExtendQueue(scheduler)

    def waiting(need: int):
        kv = SimpleNamespace(holds_kv=True, kv_committed_len=20)
        req = SimpleNamespace(kv=kv, origin_input_ids=[0] * 20, output_ids=[0] * need, to_finish=None,
                              finished=lambda: False)
        seq = SimpleNamespace(req=req, phase=None, unit=SimpleNamespace(extending=0))
        queue.add(seq)
        return seq

    a, b, c = waiting(5), waiting(10), waiting(3)
    assert queue.take_batch() == [a.req]  # 12 free: a fits, b does not, and c may not overtake b
    assert queue.waiting == [b, c] and queue.too_big() == []
    allocator.available_size = lambda: 30
    assert queue.take_batch() == [b.req, c.req] and len(queue) == 0
    huge = waiting(150)
    assert queue.take_batch() is None and queue.too_big() == [huge]  # its unit gets the clear error
