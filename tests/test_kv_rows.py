"""A step's forks and joins move slot ids in one indexed copy (sched/kv.py): the same
rows as one block at a time, done by hand."""

from __future__ import annotations

import random

import torch

from npr_engine.sched.kv import alias_prefixes, join_rows, move_slots, write_extend_slots


def _table(rng: random.Random, rows: int = 40, width: int = 300) -> torch.Tensor:
    return torch.tensor([[rng.randrange(1, 10**6) for _ in range(width)] for _ in range(rows)], dtype=torch.int32)


def test_step_of_forks_aliases_each_prefix():
    rng = random.Random(1)
    for _ in range(20):
        table = _table(rng)
        expected = table.clone()
        free = list(range(1, 40))
        rng.shuffle(free)
        forks = []
        for _ in range(rng.randint(1, 6)):
            parent, n = free.pop(), rng.choice([0, 1, rng.randint(2, 200)])
            rows = [free.pop() for _ in range(rng.randint(1, 4))]
            forks.append((parent, rows, n))
            for row in rows:
                expected[row, :n] = expected[parent, :n]
        alias_prefixes(table, forks)
        assert torch.equal(table, expected)


def test_step_of_joins_concatenates_each_block():
    rng = random.Random(2)
    for _ in range(20):
        table = _table(rng)
        expected = table.clone()
        free = list(range(1, 40))
        rng.shuffle(free)
        joins, want_ends, want_dups = [], [], []
        for _ in range(rng.randint(1, 5)):
            parent, prefix, u = free.pop(), rng.randint(0, 60), rng.choice([1, 1, 3])
            branches = [(free.pop(), prefix + u + rng.randint(0, 50)) for _ in range(rng.randint(1, 4))]
            joins.append((parent, prefix, branches, u))
            at = prefix
            for k, (row, kv_len) in enumerate(branches):
                own = expected[row, prefix:kv_len]
                if k:
                    want_dups.append(own[:u].clone())
                    own = own[u:]
                expected[parent, at:at + own.numel()] = own
                at += own.numel()
            want_ends.append(at)
        ends, dups = join_rows(table, joins)
        assert ends == want_ends and torch.equal(table, expected)
        assert torch.equal(dups, torch.cat(want_dups) if want_dups else dups[:0])


def test_extend_over_held_rows_writes_what_sglangs_fallback_writes(monkeypatch):
    """SGLang's CPU writer, given each row's own prefix, rewrites it and adds the new
    slots; ours (patches/extend_batch.py) writes the new slots alone: same table."""
    from sglang.srt.mem_cache import allocation

    monkeypatch.setattr(allocation, "attention_backends", lambda: ("torch_native", "torch_native"))
    write_cache_indices = allocation.write_cache_indices

    class Pool:
        def __init__(self, table):
            self.req_to_token = table

        def write(self, index, values):
            self.req_to_token[index] = values

    rng = random.Random(3)
    for _ in range(20):
        table = _table(rng)
        expected = table.clone()
        rows = rng.sample(range(1, 40), rng.randint(1, 12))
        prefix = [rng.choice([0, 1, rng.randint(2, 200)]) for _ in rows]
        extend = [rng.randint(1, 40) for _ in rows]
        slots = torch.tensor([rng.randrange(1, 10**6) for _ in range(sum(extend))], dtype=torch.int64)
        t = {name: torch.tensor(v, dtype=torch.int64) for name, v in
             (("rows", rows), ("prefix", prefix), ("extend", extend),
              ("seq", [p + e for p, e in zip(prefix, extend, strict=True)]))}
        prefixes = [expected[r, :p].to(torch.int64) for r, p in zip(rows, prefix, strict=True)]
        write_cache_indices(slots, t["rows"], t["rows"], t["prefix"], t["prefix"], t["seq"], t["seq"],
                            t["extend"], t["extend"], prefixes, Pool(expected))
        write_extend_slots(table, t["rows"].numpy(), t["prefix"].numpy(), t["extend"].numpy(), slots)
        assert torch.equal(table, expected)


def test_a_steps_staged_moves_copy_each_run_and_return_the_dropped_slots():
    rng = random.Random(4)
    for _ in range(20):
        table = _table(rng)
        expected = table.clone()
        rows = rng.sample(range(1, 40), 12)
        runs, dropped, want = [], [], []
        for k in range(rng.randint(1, 6)):
            src, dst = rows[2 * k], rows[2 * k + 1]
            s0, d0, n = rng.randint(0, 100), rng.randint(0, 100), rng.choice([0, 1, rng.randint(2, 150)])
            runs.append((src, s0, dst, d0, n))
            lo, m = rng.randint(0, 200), rng.choice([0, 2, 30])
            dropped.append((src, lo, 0, 0, m))
            want.append(expected[src, lo:lo + m].clone())
            expected[dst, d0:d0 + n] = expected[src, s0:s0 + n]
        freed = move_slots(table, runs, dropped)
        assert torch.equal(table, expected) and torch.equal(freed, torch.cat(want))
