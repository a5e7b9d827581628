"""Data for every stage: sources and the bad-row log (`sources`), conversations (`conversations`), the schema of
each kind of data (`schemas`), the built splits (`built`), and one module per kind with its `data` section class
and builder: `text` (CPT), `sft`, `preference` (RM, DPO family), `rl` (PPO, GRPO)."""
