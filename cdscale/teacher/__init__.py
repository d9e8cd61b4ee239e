"""Teacher side: vLLM engines as Ray actors, with in-place weight reload."""
