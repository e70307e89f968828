"""Built-in family adapters; importing this package registers them."""

from . import gemma3, idefics3, llava, llava_next, qwen2_vl  # noqa: F401
