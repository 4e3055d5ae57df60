"""agentrl: reinforcement learning of LLM agents on long, multi-step, tool-using tasks."""

__version__ = "0.1.0"
