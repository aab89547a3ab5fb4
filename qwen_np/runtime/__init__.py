"""The run layer: qwen_np.load (load.py), the tokenizer, chat prompts, the generation loop,
continuous batching and the prepared-model cache. Imports the model, the backends and the
formats; never the oracle tools or the apps."""
