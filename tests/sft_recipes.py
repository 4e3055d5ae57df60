"""``agentrl sft`` arguments of the graph_nav small warm start (numbered and marked exits, the
explorer's demonstrations, whole episodes in one window), shared by tests/test_sft.py and the first stage
of graph_nav_long's curriculum in tests/test_long_warm_start.py."""

GRAPH_NAV = ["--env-option", "size=small", "--env-option", "numbered=true", "--env-option", "marked=true",
             "--env-option", "expert_explores=true", "--compaction", "none", "--context-budget", "3072",
             "--max-turns", "24"]
GRAPH_NAV_SFT = ["--episodes", "3200", "--epochs", "1", "--lr", "1e-3", "--lr-schedule", "cosine",
                 "--warmup-steps", "100", "--eval-episodes", "64"]
