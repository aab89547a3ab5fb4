"""The model layer: the Qwen forward pass over the backend ops. config (a dict to a QwenConfig,
reading no files), weights (the named tensors of one model), forward (one layer function for a
prefill, a cached chunk and a batched decode step), rope, mlp (SwiGLU and the mixture of
experts), kv_cache and sampling. Imports qwen_np.tensors; never a backend, a file format or the
runtime."""
