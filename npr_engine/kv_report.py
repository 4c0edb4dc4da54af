"""Scheduler-side KV accounting report (DESIGN.md section 6, "KV accounting in tests").

Read inside the scheduler process; reaches clients through SGLang's internal-state
request (`/server_info` over HTTP, `Engine.get_server_info()` offline) under the key
`npr_kv`. When the server is idle a correct engine shows available + evictable ==
pool size, nothing protected, unique free slot ids and every request row free.
"""

from __future__ import annotations


def kv_report(scheduler) -> dict:
    allocator = scheduler.token_to_kv_pool_allocator
    tree = scheduler.tree_cache
    free = allocator.get_all_free_pages()
    rows = scheduler.req_to_token_pool
    rows_total = rows.size + getattr(rows, "pre_alloc_size", 0)
    running = scheduler.running_batch.reqs if scheduler.running_batch else []
    return {
        "pool_size": int(scheduler.max_total_num_tokens),
        "available": int(allocator.available_size()),
        "evictable": int(tree.evictable_size()),
        "protected": int(tree.protected_size()),
        "free_ids": int(free.numel()),
        "free_ids_unique": int(free.unique().numel()) == int(free.numel()),
        "rows_total": int(rows_total),
        "rows_free": len(rows.free_slots),
        "running": len(running),
        "waiting": len(scheduler.waiting_queue),
        "forward_ct": int(scheduler.forward_ct),
    }


def idle_problems(report: dict) -> list[str]:
    """What is wrong with an idle server's report (empty list: nothing leaked)."""
    problems = []
    if report["running"] or report["waiting"]:
        problems.append(f"not idle: {report['running']} running, {report['waiting']} waiting")
    if report["available"] + report["evictable"] != report["pool_size"]:
        problems.append(
            f"KV leak: available {report['available']} + evictable {report['evictable']}"
            f" != pool {report['pool_size']}"
        )
    if report["protected"]:
        problems.append(f"{report['protected']} KV slots still protected")
    if not report["free_ids_unique"]:
        problems.append("duplicate ids in the free list (a slot was freed twice)")
    if report["rows_free"] != report["rows_total"]:
        problems.append(f"{report['rows_total'] - report['rows_free']} request rows held")
    return problems
