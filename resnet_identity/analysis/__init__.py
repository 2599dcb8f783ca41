"""The papers' analyses as tools: signal propagation (v2 Sec. 3-4) and paper reference figures."""
