"""Fallbacks and retraction, on a second, deliberately small engine.

One module-scoped engine: a 1024-token KV pool and at most 4 running requests.
Retraction: SGLang admits requests conservatively enough that real KV pressure did not
retract anything on these CPU runs (tried: over-admission by a low
SGLANG_INIT_NEW_TOKEN_RATIO), so the engine runs with SGLang's own test switch
SGLANG_TEST_RETRACT: every 3rd decode step `retract_decode` retracts one request, by
the same order and code path as under memory pressure (DESIGN.md section 4: other
requests first, a unit never in part, a unit that must go aborted as a whole).
"""

from __future__ import annotations

import asyncio

import pytest

from tests.support.engine import assert_idle, forced, params, start_engine, stop_engine

# Room to re-admit a retracted request at once (SGLang raises its admission estimate
# after a retraction; with less, a retracted request waits and the batch may hold only
# unit members, which then must go).
KV_TOKENS = 1024
# Room for one 2-path unit beside two plain requests (rows: 3 + 2), not for an 8-path fork.
MAX_RUNNING = 6


@pytest.fixture(scope="module")
def small_engine(default_model_dir):
    llm = start_engine(
        env={"SGLANG_TEST_RETRACT": "1"},
        model_path=str(default_model_dir), device="cpu", attention_backend="torch_native",
        disable_cuda_graph=True, dtype="float32", max_total_tokens=KV_TOKENS,
        max_running_requests=MAX_RUNNING, random_seed=0, log_level="error",
        # NOTE: SGLang keeps the tokenizer-side server args process-global: a second
        # engine without this flag would make the session engine refuse its processors.
        enable_custom_logit_processor=True,
    )
    try:
        yield llm
    finally:
        stop_engine(llm)


def pool_size(engine) -> int:
    return engine.get_server_info()["internal_states"][0]["npr_kv"]["pool_size"]


def generate_all(engine, prompts: list[str], samplings: list[dict]) -> list[dict | BaseException]:
    async def go():
        tasks = [engine.async_generate(p, s) for p, s in zip(prompts, samplings, strict=True)]
        return await asyncio.gather(*tasks, return_exceptions=True)

    return engine.loop.run_until_complete(go())


def test_fork_wider_than_max_running_requests_falls_back(small_engine):
    out = small_engine.generate("Why is the sky blue?", params(120, forced(8)))
    (block,) = out["meta_info"]["npr_trace"]["blocks"]
    assert block["fallback"] == "max_running_requests" and block["paths"] == []
    assert out["text"].startswith("<parallel>")
    assert_idle(small_engine)


def test_fork_that_free_kv_cannot_take_falls_back(small_engine):
    tokenizer = small_engine.tokenizer_manager.tokenizer
    word = tokenizer.encode(" sky", add_special_tokens=False)[0]
    # Leaves ~60 free slots at the fork; 3 paths need ~2 x 3 x (header + close + 2).
    prompt = [word] * (pool_size(small_engine) - 64)
    out = small_engine.generate(input_ids=prompt, sampling_params=params(60, forced(3)))
    (block,) = out["meta_info"]["npr_trace"]["blocks"]
    assert block["fallback"] == "kv_slots" and block["paths"] == []
    assert out["meta_info"]["completion_tokens"] <= 60
    assert_idle(small_engine)


def test_retraction_takes_plain_requests_before_a_unit(small_engine):
    # The plain requests outlast the unit, so every retraction has one to take.
    samplings = [params(40, forced(2, max_path_tokens=12), ignore_eos=True),
                 params(90, ignore_eos=True), params(90, ignore_eos=True)]
    outs = generate_all(small_engine, ["Why is the sea salty?", "Name two planets.", "List fruits:"], samplings)
    unit, *plain = outs
    assert all(isinstance(o, dict) for o in outs), outs
    assert unit["meta_info"]["finish_reason"]["type"] == "length", unit["meta_info"]
    assert unit["meta_info"]["num_retractions"] == 0
    assert unit["meta_info"]["npr_trace"]["blocks"][0]["fallback"] is None
    assert sum(o["meta_info"]["num_retractions"] for o in plain) >= 1
    assert all(o["meta_info"]["completion_tokens"] == 90 for o in plain)
    assert_idle(small_engine)


def test_units_that_must_go_are_retracted_whole_and_continue_where_they_stopped(small_engine, engine):
    # Only units in the batch (two 2-path units: 2 x 3 rows = MAX_RUNNING, so both fork):
    # a retraction while their branches decode must take a unit member, so that unit is
    # held whole, rebuilt by prefill and continues: the same tokens as on an engine that
    # never retracts, no abort.
    prompts = ["Why is the sea salty?", "Name two planets."]
    samplings = [params(40, forced(2, max_path_tokens=20), ignore_eos=True) for _ in range(2)]
    outs = generate_all(small_engine, prompts, samplings)
    assert all(isinstance(o, dict) for o in outs), outs
    assert [o["meta_info"]["finish_reason"]["type"] for o in outs] == ["length", "length"]
    traces = [o["meta_info"]["npr_trace"] for o in outs]
    assert sum(t["retractions"] for t in traces) >= 1, traces
    assert all(o["meta_info"]["num_retractions"] == t["retractions"] for o, t in zip(outs, traces, strict=True))
    assert all(p["finish"] != "abort" for t in traces for b in t["blocks"] for p in b["paths"])
    reference = [engine.generate(p, s) for p, s in zip(prompts, samplings, strict=True)]
    for out, ref in zip(outs, reference, strict=True):
        assert ref["meta_info"]["npr_trace"]["retractions"] == 0
        assert out["output_ids"] == ref["output_ids"]
        assert out["text"] == ref["text"]
    assert_idle(small_engine)
    # The engine keeps serving.
    assert small_engine.generate("Hi", params(4))["meta_info"]["completion_tokens"] == 4


def test_retraction_order_puts_other_requests_first_then_whole_units():
    from types import SimpleNamespace

    from npr_engine.sched.retraction import retraction_order

    unit_a, unit_b = SimpleNamespace(joined=False), SimpleNamespace(joined=False)

    def branch(unit):
        return SimpleNamespace(npr=SimpleNamespace(is_branch=True, child=None, unit=unit))

    plain = SimpleNamespace()
    reqs = [branch(unit_a), plain, branch(unit_b), branch(unit_a), plain, branch(unit_b)]
    # SGLang's order (most preferred to keep first); it retracts from the end.
    order = retraction_order([5, 4, 3, 2, 1, 0], reqs)
    assert order == [5, 2, 3, 0, 4, 1]


def test_held_units_resume_oldest_first_and_one_that_cannot_fit_alone_is_aborted(monkeypatch):
    from types import SimpleNamespace

    from npr_engine.sched import retraction
    from npr_engine.sched.rebuild import ALIAS, COPY, Piece, rebuild_cost
    from npr_engine.sched.state import Phase

    def seq(pieces, tokens, branch=False):
        req = SimpleNamespace(origin_input_ids=[0] * 10, output_ids=[0] * (tokens - 10))
        return SimpleNamespace(req=req, pieces=pieces, is_branch=branch)

    # A root of 40 KV tokens that joined two branches (copies of 8 and 7 slots), its
    # pending token not yet computed: causal 20 + scratch rows 2 x 9 (u + own) + causal 5.
    b1 = seq([Piece(ALIAS, 0, end=20), Piece("causal", 20)], 29, branch=True)
    b2 = seq([Piece(ALIAS, 0, end=20), Piece("causal", 20)], 29, branch=True)
    root = seq([Piece("causal", 0), Piece(COPY, 20, src=b1, src_start=20, end=29),
                Piece(COPY, 29, src=b2, src_start=21, end=37), Piece("causal", 37)], 41)
    assert rebuild_cost([(root, 40)]) == (20 + 9 + 9 + 3, 3)

    aborted, rebuilt = [], []
    free = {"n": 62}

    def rebuild(ctl, held):
        rebuilt.append(held.unit)
        ctl.lifecycle.held.pop(id(held.unit))
        free["n"] -= 43

    monkeypatch.setattr(retraction, "_rebuild", rebuild)
    scheduler = SimpleNamespace(
        token_to_kv_pool_allocator=SimpleNamespace(size=1000, available_size=lambda: free["n"]),
        tree_cache=SimpleNamespace(evictable_size=lambda: 0),
        req_to_token_pool=SimpleNamespace(available_size=lambda: 8), max_running_requests=8)
    lifecycle = SimpleNamespace(held={}, abort=lambda unit, message, status: (
        aborted.append((unit, message, status)), lifecycle.held.pop(id(unit))))
    ctl = SimpleNamespace(lifecycle=lifecycle, scheduler=scheduler, extends=[])
    units = [SimpleNamespace(name=k) for k in "abc"]
    for unit in units:
        lifecycle.held[id(unit)] = retraction.Held(unit, [(root, 40, Phase.ACTIVE, Phase.ACTIVE)])
    running = SimpleNamespace(reqs=[object()])
    # Beside running requests: 41 slots + 1 pending token + 1 step + SGLang's 20-step margin.
    retraction.resume_held(ctl, running)
    assert rebuilt == [] and aborted == [] and len(lifecycle.held) == 3  # 62 < 63: all wait
    free["n"] = 63 + 43
    retraction.resume_held(ctl, running)
    assert rebuilt == units[:2] and aborted == []  # oldest first, while they fit
    # Nothing else running: the least (43) would do, but 20 are free: it can never fit.
    retraction.resume_held(ctl, SimpleNamespace(reqs=[]))
    assert [a[0] for a in aborted] == [units[2]] and aborted[0][2] == 503
    assert "needs 43 KV tokens" in aborted[0][1] and "the 1000-token pool" in aborted[0][1]
    assert lifecycle.held == {}


def test_an_abort_by_rid_finds_a_held_unit():
    from types import SimpleNamespace

    from npr_engine.sched.lifecycle import UnitLifecycle
    from npr_engine.sched.retraction import Held

    lifecycle = UnitLifecycle(SimpleNamespace(scheduler=None, metrics=None, extends=None))

    def unit(rid):
        root = SimpleNamespace(req=SimpleNamespace(rid=rid), child=None)
        return SimpleNamespace(root=root)

    forked, held = unit("req-a"), unit("req-b")
    lifecycle.opened(forked)
    lifecycle.held[id(held)] = Held(held, [])  # a joined root with no block open: held only
    assert lifecycle.matching("req-b", abort_all=False) == [held]
    assert lifecycle.matching("", abort_all=True) == [forked, held]


def test_a_steps_forks_count_each_others_branches_against_max_running_requests(monkeypatch):
    """Forks of one step see the rows and running requests the step's earlier forks add
    (each: its width less its parked parent): three 3-path forks beside 3 running
    requests and max_running_requests=6 leave only the first to run."""
    from types import SimpleNamespace

    from npr_engine.core.options import NprOptions
    from npr_engine.core.trace import RequestTrace
    from npr_engine.grammar import PARALLEL, TagParser
    from npr_engine.sched.forking import ForkJoin
    from npr_engine.sched.state import Seq, Unit

    fallbacks, opened = [], []
    scheduler = SimpleNamespace(
        token_to_kv_pool_allocator=SimpleNamespace(available_size=lambda: 10_000),
        tree_cache=SimpleNamespace(evictable_size=lambda: 0),
        req_to_token_pool=SimpleNamespace(available_size=lambda: 100, alloc_rows=lambda n: list(range(10, 10 + n)),
                                          req_to_token=None),
        running_batch=SimpleNamespace(reqs=[object()] * 3), max_running_requests=6)
    ctl = SimpleNamespace(scheduler=scheduler, tokens=lambda text: [0] * max(len(text) // 4, 1),
                          close_count=lambda seq: 2, metrics=SimpleNamespace(fallback=fallbacks.append))
    fj = ForkJoin(ctl)
    monkeypatch.setattr("npr_engine.sched.forking.alias_prefixes", lambda table, forks: None)
    monkeypatch.setattr(fj, "_open", lambda seq, ids, trace, rows, out: opened.append(rows))
    options = NprOptions.from_dict({"paths": 3})
    forks = []
    for _ in range(3):
        req = SimpleNamespace(output_ids=[1, 2], sampling_params=SimpleNamespace(max_new_tokens=500),
                              kv=SimpleNamespace(req_pool_idx=1, kv_committed_len=5))
        unit = Unit(root=None, trace=RequestTrace(schema="parallel"))
        unit.root = Seq(req, unit, options, PARALLEL, TagParser(PARALLEL, "root"), None)
        forks.append((unit.root, ()))
    assert fj.fork_step(forks) == [forks[0][0]]
    assert opened == [[10, 11, 12]] and fallbacks == ["max_running_requests"] * 2
    scheduler.max_running_requests = 3 + 3 * 2  # room for all three
    fallbacks.clear(), opened.clear()
    assert len(fj.fork_step(forks)) == 3 and fallbacks == [] and opened == [[10, 11, 12], [13, 14, 15], [16, 17, 18]]
