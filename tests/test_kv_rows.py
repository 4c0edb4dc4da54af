"""A step's forks and joins move slot ids in one indexed copy (sched/kv.py): the same
rows as one block at a time, done by hand."""

from __future__ import annotations

import random

import torch

from npr_engine.sched.kv import alias_prefixes, join_rows


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
