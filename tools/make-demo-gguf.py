#!/usr/bin/env python3
"""Write the tiny demo GGUF shipped as ``conf/demo/janus-pro-7b-demo.gguf``.

The file is a valid GGUF (architecture ``llama``) of a few KiB with two small tensors. It
carries the demo's model name but no real weights: no runtime could generate text with it,
and stock Ollama cannot run Janus-Pro anyway (upstream issue 8618). It exists so that the
demo and the tests can import a "model" through ``/api/blobs`` and ``/api/create`` files.

Needs the PyPI ``gguf`` package (and numpy), e.g. ``.venv/bin/python``.

Usage: make-demo-gguf.py [OUTPUT]   (default: conf/demo/janus-pro-7b-demo.gguf)
"""

from __future__ import annotations

import sys
from pathlib import Path

import gguf
import numpy as np

DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "conf/demo/janus-pro-7b-demo.gguf"
EMBEDDING_LENGTH = 16
VOCAB = ["<unk>", "<s>", "</s>", "janus", "pro", "demo", "hello", "world"]


def write_demo_gguf(path: Path) -> None:
    """Write the demo model to ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("janus-pro-7b-demo")
    writer.add_type("model")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_context_length(4096)
    writer.add_embedding_length(EMBEDDING_LENGTH)
    writer.add_block_count(1)
    writer.add_feed_forward_length(32)
    writer.add_head_count(2)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(VOCAB)

    # Deterministic values so the file (and its sha256) is the same on every run.
    embeddings = np.linspace(-1, 1, len(VOCAB) * EMBEDDING_LENGTH, dtype=np.float16)
    writer.add_tensor("token_embd.weight", embeddings.reshape(len(VOCAB), EMBEDDING_LENGTH))
    writer.add_tensor("output_norm.weight", np.ones(EMBEDDING_LENGTH, dtype=np.float32))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main(argv: list[str]) -> int:
    """Write the demo GGUF to the path in ``argv`` or the default; print the path."""
    output = Path(argv[1]) if len(argv) > 1 else DEFAULT_OUTPUT
    write_demo_gguf(output)
    print(f"{output}: {output.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
