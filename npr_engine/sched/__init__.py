"""Fork and join inside SGLang's scheduler (runs in the scheduler process)."""
