"""The file layer: every format on disk read into the model's names and the canonical tensors.
safetensors, GGUF, Hugging Face folders (plain, GPTQ/AWQ, the original Qwen), the GPTQ, AWQ and
GGUF-block converters, and open.py, the one dispatch between a folder and a GGUF file. Imports
qwen_np.tensors and the model's schemas (config, weights); never the forward pass, a backend or
the runtime."""
